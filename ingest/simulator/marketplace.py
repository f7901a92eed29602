"""Marketplace: the simulator's front door (oracle, request-level stepping, whole streams).

Two ways to drive it:

* Request level, for a real serving API: iterate ``visits(hours)``, which yields, in time order,
  ``Visit`` objects interleaved with the ``UserSignedUp`` / ``ItemPublished`` events of users and
  items arriving meanwhile (publish those first: a new user's signup precedes their first visit).
  Answer each visit with ``respond(visit, slate)``; it returns the impressions, clicks and
  engagements, and the engagements are timestamped minutes to hours in the future (label delay):
  the caller holds them until then.
* Whole stream: ``simulate(hours, policy)`` does the above with a policy and yields every event in
  non-decreasing event_time. Engagements due after the horizon stay pending and come out of the
  next ``simulate`` call (or ``flush_pending()``), as labels would in a real system.

Both advance one shared clock (``now``), starting at ``config.start``; successive calls continue
where the previous one stopped. ``bootstrap_events()`` is the initial catalog, at ``config.start``.
One Marketplace serves one driver at a time: do not interleave two ``visits`` iterators.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime, timedelta
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from ..schema import ImpressionServed, ItemClicked, ItemEngaged, ItemPublished, UserSignedUp
from .click_model import ClickModel
from .config import SimConfig
from .ids import IdFactory, item_id, user_id
from .policies import Policy, popularity_policy
from .profiles import Profiles
from .traffic import Traffic, Visit
from .world import World

SimEvent = Union[ImpressionServed, ItemClicked, ItemEngaged, UserSignedUp, ItemPublished]
_RESPOND_STREAM = 101  # spawn key of the per-visit outcome RNGs


class Marketplace:
    def __init__(self, config: SimConfig | None = None):
        self.config = cfg = config or SimConfig()
        # Independent streams: changing one part (say, text or policy) leaves the others intact.
        world_ss, profile_ss, id_ss, visit_ss, user_ss, item_ss = np.random.SeedSequence(cfg.seed).spawn(6)
        self.world = World(cfg, np.random.default_rng(world_ss))
        self.click_model = ClickModel(cfg)
        self._ids = IdFactory(np.random.default_rng(id_ss))
        self._profiles = Profiles(self.world, self._ids, np.random.default_rng(profile_ss))
        rngs = tuple(np.random.default_rng(s) for s in (visit_ss, user_ss, item_ss))
        self._traffic = Traffic(cfg, self.world, rngs)
        self._now_s = 0.0
        self._visit_seq = 0
        self._drift_s = None if cfg.drift_at is None else (cfg.drift_at - cfg.start).total_seconds()
        self._user_index = {user_id(u): u for u in range(self.world.n_users)}
        self._item_index = {item_id(i): i for i in range(self.world.n_items)}
        self._candidates = tuple(self._item_index)
        self._pending: list[tuple[datetime, int, SimEvent]] = []  # delayed events of simulate()
        self._tiebreak = itertools.count()
        self._default_policy: Policy | None = None
        start = cfg.start
        self._bootstrap = tuple(
            [self._profiles.user_signed_up(u, start) for u in range(self.world.n_users)]
            + [self._profiles.item_published(i, start) for i in range(self.world.n_items)]
        )

    # --- time -------------------------------------------------------------------------------
    @property
    def now(self) -> datetime:
        """The simulation clock: the end of the last simulated span (or of the last yielded entry)."""
        return self._dt(self._now_s)

    def _dt(self, seconds: float) -> datetime:
        return self.config.start + timedelta(seconds=seconds)

    def _secs(self, at: datetime | None) -> float:
        return self._now_s if at is None else (at - self.config.start).total_seconds()

    def _drifted(self, at_s: float) -> bool:
        return self._drift_s is not None and at_s >= self._drift_s

    # --- ids ----------------------------------------------------------------------------------
    @property
    def candidates(self) -> tuple[str, ...]:
        """Ids of every item published so far (the same tuple object until an item arrives)."""
        return self._candidates

    @property
    def user_ids(self) -> tuple[str, ...]:
        return tuple(self._user_index)

    def _user(self, uid: str) -> int:
        try:
            return self._user_index[uid]
        except KeyError:
            raise ValueError(f"unknown user {uid!r}") from None

    def item_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """World indices of items; fast when given `candidates` itself (policies are)."""
        if item_ids is self._candidates:
            return np.arange(len(item_ids))  # candidates are every item, in index order
        try:
            return np.fromiter((self._item_index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
        except KeyError as e:
            raise ValueError(f"unknown item {e.args[0]!r}") from None

    # --- oracle -------------------------------------------------------------------------------
    def relevance(self, user_id: str, item_id: str, at: datetime | None = None) -> float:
        """True relevance (cosine of taste and item, in [-1, 1]) at `at` (default: now)."""
        items = self.item_indices([item_id])
        return float(self.world.relevance(self._user(user_id), items, self._drifted(self._secs(at)))[0])

    def click_probabilities(
        self, user_id: str, item_ids: Sequence[str], positions: int | Sequence[int] = 0, at: datetime | None = None
    ) -> np.ndarray:
        """True click probabilities of items shown at `positions` (vectorized oracle)."""
        items = self.item_indices(item_ids)
        rel = self.world.relevance(self._user(user_id), items, self._drifted(self._secs(at)))
        return self.click_model.click_probability(rel, self.world.item_pop_z.view[items], np.asarray(positions))

    def click_probability(self, user_id: str, item_id: str, position: int, at: datetime | None = None) -> float:
        """examination(position) * attractiveness(relevance(user, item, at), popularity)."""
        return float(self.click_probabilities(user_id, [item_id], position, at)[0])

    def item_popularity(self, item_ids: Sequence[str]) -> np.ndarray:
        """True (Zipf) popularity weights; the rank-1 initial item has 1.0."""
        return self.world.item_popularity.view[self.item_indices(item_ids)]

    # --- events -------------------------------------------------------------------------------
    def set_sessions_per_hour(self, sessions_per_hour: float) -> None:
        """Change the visit rate from the next visit on; the world and its other processes go on."""
        self._traffic.set_visit_rate(sessions_per_hour)

    def bootstrap_events(self) -> list[UserSignedUp | ItemPublished]:
        """Signups of the initial users, then publications of the initial catalog, at config.start."""
        return list(self._bootstrap)

    def visits(self, hours: float) -> Iterator[Visit | UserSignedUp | ItemPublished]:
        """The next `hours` of traffic: visits interleaved with arrivals, in time order."""
        end = self._now_s + hours * 3600.0
        for t, kind, user in self._traffic.until(end):
            self._now_s = t
            at = self._dt(t)
            if kind == "user":
                (u,) = self.world.add_users(1)
                assert u == user
                self._user_index[user_id(u)] = u
                yield self._profiles.user_signed_up(u, at)
            elif kind == "item":
                (i,) = self.world.add_items(1)
                self._item_index[item_id(i)] = i
                self._candidates = (*self._candidates, item_id(i))
                yield self._profiles.item_published(i, at)
            else:
                seq, self._visit_seq = self._visit_seq, self._visit_seq + 1
                yield Visit(user_id(user), at, self._ids.request(seq), seq)
        self._now_s = max(self._now_s, end)

    def respond(
        self,
        visit: Visit,
        slate: Sequence[str],
        surface: str = "home",
        model_versions: Mapping[str, str] | None = None,
        experiment_arm: str = "control",
        features: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
        scores: Sequence[float] | None = None,
    ) -> list[ImpressionServed | ItemClicked | ItemEngaged]:
        """Show `slate` (position 0 first) to the visit's user and return what follows.

        One ImpressionServed per position (at visit.at), an ItemClicked where the user clicks
        (sampled from the oracle, seconds later) and, for some clicks, an ItemEngaged minutes to
        hours after the click. `features` is one dict for every position or one per position.
        The outcome depends only on the config, the visit and the slate: responding to the same
        visit twice with the same slate gives the same events.
        """
        if len(set(slate)) != len(slate):
            raise ValueError("slate repeats an item")
        n = len(slate)
        if 3 * n >= 4096:
            raise ValueError("slate too long")
        per_position = features is not None and not isinstance(features, Mapping)
        if (per_position and len(features) != n) or (scores is not None and len(scores) != n):  # type: ignore[arg-type]
            raise ValueError("features / scores must have one entry per slate position")
        u = self._user(visit.user_id)
        items = self.item_indices(slate)
        at_s = self._secs(visit.at)
        rel = self.world.relevance(u, items, self._drifted(at_s))
        rng = np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(_RESPOND_STREAM, visit.seq)))
        out = self.click_model.sample(rng, rel, self.world.item_pop_z.view[items])

        seq, rid, uid, client = visit.seq, visit.request_id, visit.user_id, self._profiles.client(u)
        versions = dict(model_versions or {})
        events: list[Any] = [
            ImpressionServed(
                event_id=self._ids.visit_event(seq, p),
                event_time=visit.at,
                request_id=rid,
                user_id=uid,
                item_id=iid,
                position=p,
                surface=surface,
                model_versions=versions,
                experiment_arm=experiment_arm,
                features=dict((features[p] if per_position else features) or {}),  # type: ignore[index]
                score=None if scores is None else float(scores[p]),
            )
            for p, iid in enumerate(slate)
        ]
        for p in np.flatnonzero(out.clicked):
            p = int(p)
            clicked_at = visit.at + timedelta(seconds=float(out.click_delay_s[p]))
            events.append(ItemClicked(
                event_id=self._ids.visit_event(seq, n + p), event_time=clicked_at, client=client,
                user_id=uid, item_id=slate[p], request_id=rid, position=p, surface=surface,
            ))
            if out.engaged[p]:
                events.append(ItemEngaged(
                    event_id=self._ids.visit_event(seq, 2 * n + p),
                    event_time=clicked_at + timedelta(seconds=float(out.engage_delay_s[p])),
                    client=client, user_id=uid, item_id=slate[p], request_id=rid,
                    kind=self.click_model.kind_name(int(out.kind[p])), value=float(out.value[p]),
                ))
        return events

    def simulate(self, hours: float, policy: Policy | None = None) -> Iterator[SimEvent]:
        """The next `hours` of events in non-decreasing event_time, served by `policy`
        (user_id, at, candidate_item_ids, k) -> slate; default: popularity-proportional sampling."""
        if policy is None:
            if self._default_policy is None:  # built once, so its RNG stream carries across spans
                self._default_policy = popularity_policy(self)
            policy = self._default_policy
        end = self._dt(self._now_s + hours * 3600.0)
        k, heap = self.config.slate_size, self._pending
        for entry in self.visits(hours):
            t = entry.at if isinstance(entry, Visit) else entry.event_time
            while heap and heap[0][0] <= t:
                yield heapq.heappop(heap)[2]
            if isinstance(entry, Visit):
                slate = policy(entry.user_id, entry.at, self._candidates, k)
                for e in self.respond(entry, slate):
                    heapq.heappush(heap, (e.event_time, next(self._tiebreak), e))
            else:
                yield entry
        while heap and heap[0][0] <= end:
            yield heapq.heappop(heap)[2]

    def flush_pending(self) -> list[SimEvent]:
        """Hand over, in time order, the events simulate() holds past its horizon (late labels)."""
        return [heapq.heappop(self._pending)[2] for _ in range(len(self._pending))]
