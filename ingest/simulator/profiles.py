"""Profiles: the visible side of users and items, as UserSignedUp / ItemPublished events.

Users get fake personal data (e-mail, IP, device id) on purpose, so the pseudonymization at
ingestion has something real-looking to scrub. Items get a title, a description, tags and the
content vector. All randomness comes from a dedicated RNG stream, so text never perturbs the
world's geometry.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from ..schema import Client, ItemPublished, UserSignedUp
from .ids import IdFactory, creator_id, item_id, user_id
from .world import World

_CATEGORIES = (
    "music", "film", "books", "games", "sports", "cooking",
    "travel", "science", "fashion", "comedy", "news", "diy",
)
_ADJECTIVES = ("quiet", "bright", "hidden", "golden", "wild", "urban", "lost", "electric", "gentle", "bold")
_NOUNS = ("harbor", "signal", "garden", "machine", "river", "journey", "theory", "kitchen", "echo", "summit")
_COUNTRIES = ("US", "DE", "FR", "GB", "BR", "IN", "JP", "ES", "CA", "NL")
_COUNTRY_P = np.array([30, 10, 8, 8, 8, 12, 6, 6, 6, 6], dtype=float) / 100
_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
_CHANNELS = ("organic", "search", "social", "referral")
_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Eightbox/1.0",
    "Mozilla/5.0 (Linux; Android 14) Eightbox/1.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1",
)


def category_name(index: int) -> str:
    return _CATEGORIES[index] if index < len(_CATEGORIES) else f"category{index:02d}"


class Profiles:
    """Builds signup / publish events and remembers each user's device (their Client)."""

    def __init__(self, world: World, ids: IdFactory, rng: np.random.Generator):
        self._world = world
        self._ids = ids
        self._rng = rng
        self._clients: list[Client] = []

    def client(self, user: int) -> Client:
        return self._clients[user]

    def user_signed_up(self, user: int, at: datetime) -> UserSignedUp:
        """Must be called once per user, in index order (it assigns the user's device)."""
        assert user == len(self._clients), "users must sign up in index order"
        rng = self._rng
        ip = "10." + ".".join(str(int(b)) for b in rng.integers(0, 256, size=3))
        client = Client(
            ip=ip,
            device_id=rng.bytes(8).hex(),
            user_agent=_USER_AGENTS[int(rng.integers(len(_USER_AGENTS)))],
        )
        self._clients.append(client)
        uid = user_id(user)
        return UserSignedUp(
            event_id=self._ids.signup_event(user),
            event_time=at,
            client=client,
            user_id=uid,
            email=f"{uid}@example.com",
            country=_COUNTRIES[int(rng.choice(len(_COUNTRIES), p=_COUNTRY_P))],
            attributes={
                "age_band": _AGE_BANDS[int(rng.integers(len(_AGE_BANDS)))],
                "signup_channel": _CHANNELS[int(rng.integers(len(_CHANNELS)))],
            },
        )

    def item_published(self, item: int, at: datetime) -> ItemPublished:
        w, rng = self._world, self._rng
        category = category_name(int(w.item_category.view[item]))
        creator = creator_id(int(w.item_creator.view[item]))
        content = w.item_content.view[item]
        adj, adj2 = (_ADJECTIVES[int(i)] for i in rng.choice(len(_ADJECTIVES), size=2, replace=False))
        noun = _NOUNS[int(rng.integers(len(_NOUNS)))]
        # Tags name the strongest content dimensions with their sign: informative, like real tags.
        top = np.argsort(-np.abs(content))[:3]
        tags = [category] + [f"t{int(d):02d}{'+' if content[d] > 0 else '-'}" for d in top]
        return ItemPublished(
            event_id=self._ids.publish_event(item),
            event_time=at,
            item_id=item_id(item),
            creator_id=creator,
            category=category,
            title=f"{adj.title()} {noun.title()} {item}",
            description=f"A {adj} and {adj2} {category} piece about a {noun}, by {creator}.",
            tags=tags,
            content_vector=[round(float(x), 6) for x in content],
        )
