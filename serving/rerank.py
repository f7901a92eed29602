"""Re-ranking: the funnel's last stage turns scored candidates into the list a user sees.

Three rules, applied while the list is built rather than as after-the-fact filters, so that no
rule can undo another:

1. MMR (Carbonell & Goldstein 1998): greedily pick argmax λ·rel(c) − (1−λ)·max sim(c, picked).
2. Creator cap: at most ``creator_cap`` items per creator; an item over the cap is skipped, never
   placed.
3. Exploration: a few slots go to ``new_or_uncertain`` items the score would not have shown,
   sampled deterministically from (seed, rng_key), so that cold items ever earn impressions.

Pure and deterministic: same candidates, config and rng_key give the same list.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace

from eightbox.serving.candidates import Candidate


@dataclass(frozen=True)
class RerankConfig:
    """What the re-ranker may do to one request's list."""

    k: int = 10
    """Length of the returned list (shorter only when too few candidates survive the cap)."""
    mmr_lambda: float = 0.8
    """1.0 is pure score order; lower trades relevance for diversity."""
    creator_cap: int | None = 2
    """Max items per creator in the final list; None disables. Items with no creator_id are never
    capped (unknown creators are not assumed to be the same creator)."""
    explore_share: float = 0.1
    """Share of the k slots reserved for exploration; 0 disables. See ``explore_slots``."""
    explore_after: int = 2
    """Exploration items never take the first ``explore_after`` positions: the top of the list
    stays earned by score. They are spread evenly over the positions after it."""
    seed: int = 0
    """Mixed with the request's rng_key; change it to re-draw every request's exploration."""

    def __post_init__(self) -> None:
        if self.k < 0 or self.explore_after < 0:
            raise ValueError("k and explore_after must be >= 0")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if not 0.0 <= self.explore_share <= 1.0:
            raise ValueError(f"explore_share must be in [0, 1], got {self.explore_share}")
        if self.creator_cap is not None and self.creator_cap < 1:
            raise ValueError("creator_cap must be >= 1 or None")

    def explore_slots(self) -> int:
        """Slots reserved for exploration: floor(k·share), raised to 1 when share > 0.

        The floor of 1 is deliberate: with floor alone, k=10 and share=0.05 would silently disable
        exploration. Never more than the k − explore_after positions exploration may take (so 0
        when k <= explore_after).
        """
        if self.explore_share <= 0.0:
            return 0
        room = max(self.k - self.explore_after, 0)
        return min(max(math.floor(self.k * self.explore_share), 1), room)


@dataclass(frozen=True)
class RerankStats:
    """Counts for the funnel explanation of one request."""

    n_in: int  # candidates received
    n_duplicates: int  # dropped because their item_id was already seen (first occurrence kept)
    n_capped: int  # never placed because their creator reached the cap
    explore_slots: int  # slots reserved by the config
    n_explored: int  # slots actually filled by exploration (<= explore_slots)
    n_out: int  # length of the returned list


def rerank(candidates: list[Candidate], config: RerankConfig, rng_key: str) -> list[Candidate]:
    """The re-ranked list; see ``rerank_with_stats``."""
    return rerank_with_stats(candidates, config, rng_key)[0]


def rerank_with_stats(
    candidates: list[Candidate], config: RerankConfig, rng_key: str
) -> tuple[list[Candidate], RerankStats]:
    """Return at most k candidates, unique by item_id, with the creator cap holding.

    Relevance is ``score`` min-max scaled over the input to [0, 1] so that λ trades like for like
    with similarity; a missing score counts as the lowest present (a degraded funnel that skipped
    the ranker still gets diversity, in input order). Ties keep input order. Every returned item is
    a shallow copy with ``explored`` set (True only for exploration picks); inputs are not mutated.
    Exploration only draws items MMR did not already pick; when fewer are eligible than reserved,
    the spare slots go back to MMR.
    """
    pool: list[Candidate] = []
    seen: set[str] = set()
    for c in candidates:
        if c.item_id not in seen:
            seen.add(c.item_id)
            pool.append(c)
    rel = _relevance(pool)
    # max_sim[i]: largest similarity of pool[i] to anything placed so far (-inf: nothing placed).
    max_sim = [-math.inf] * len(pool)
    alive = list(range(len(pool)))  # pool indices still placeable, in input order
    per_creator: dict[str, int] = {}
    capped = 0

    def place(i: int) -> None:
        nonlocal alive, capped
        alive.remove(i)
        for j in alive:
            max_sim[j] = max(max_sim[j], _similarity(pool[i], pool[j]))
        creator = pool[i].creator_id
        if creator is not None and config.creator_cap is not None:
            per_creator[creator] = per_creator.get(creator, 0) + 1
            if per_creator[creator] >= config.creator_cap:
                # The creator is full: its other items can never be placed, so drop them now.
                before = len(alive)
                alive = [j for j in alive if pool[j].creator_id != creator]
                capped += before - len(alive)

    def mmr(n: int) -> list[int]:
        picked: list[int] = []
        lam = config.mmr_lambda

        def gain(j: int) -> float:
            # Nothing placed yet (-inf): no redundancy penalty, the first pick is the top score.
            redundancy = max_sim[j] if max_sim[j] != -math.inf else 0.0
            return lam * rel[j] - (1 - lam) * redundancy

        while alive and len(picked) < n:
            best = max(alive, key=gain)  # max() keeps the first of equal keys: input order breaks ties
            place(best)
            picked.append(best)
        return picked

    slots = config.explore_slots()
    ranked = mmr(config.k - slots)
    explored: list[int] = []
    if slots:
        rng = random.Random(_seed(config.seed, rng_key))
        while len(explored) < slots:
            # Sorted by item_id so the draw does not depend on the order sources merged in.
            eligible = sorted((j for j in alive if pool[j].new_or_uncertain),
                              key=lambda j: pool[j].item_id)
            if not eligible:
                break
            pick = rng.choice(eligible)
            place(pick)  # counts toward the cap and the diversity of later MMR picks
            explored.append(pick)
        ranked += mmr(slots - len(explored))

    out = _interleave(ranked, explored, config.explore_after)
    chosen = set(explored)
    result = [replace(pool[i], explored=i in chosen) for i in out]
    stats = RerankStats(
        n_in=len(candidates), n_duplicates=len(candidates) - len(pool), n_capped=capped,
        explore_slots=slots, n_explored=len(explored), n_out=len(result),
    )
    return result, stats


def _relevance(pool: list[Candidate]) -> list[float]:
    scores = [c.score for c in pool if c.score is not None]
    if not scores:
        return [1.0] * len(pool)
    lo, hi = min(scores), max(scores)
    span = hi - lo
    return [0.0 if c.score is None else (1.0 if span == 0 else (c.score - lo) / span) for c in pool]


def _similarity(a: Candidate, b: Candidate) -> float:
    """Cosine of the embeddings when both have a usable one (same length, non-zero), else 1.0 for
    the same known category and 0.0 otherwise (an unknown category matches nothing)."""
    ea, eb = a.embedding, b.embedding
    if ea is not None and eb is not None and len(ea) == len(eb):
        na = math.sqrt(sum(x * x for x in ea))
        nb = math.sqrt(sum(x * x for x in eb))
        if na > 0 and nb > 0:
            return sum(x * y for x, y in zip(ea, eb)) / (na * nb)
    return 1.0 if a.category is not None and a.category == b.category else 0.0


def _seed(seed: int, rng_key: str) -> int:
    # hashlib, not hash(): Python salts str hashes per process, which would break determinism.
    return int.from_bytes(hashlib.sha256(f"{seed}:{rng_key}".encode()).digest()[:8], "big")


def _interleave(ranked: list[int], explored: list[int], after: int) -> list[int]:
    """Spread the m explored items evenly over positions [after, L) of the final list of length L.

    Exploration happens only when MMR filled its k − slots >= after positions, so those positions
    exist and the spacing (L − after) / m is >= 1: the positions are distinct.
    """
    if not explored:
        return list(ranked)
    total, m = len(ranked) + len(explored), len(explored)
    positions = {after + math.floor((i + 0.5) * (total - after) / m) for i in range(m)}
    r, e = iter(ranked), iter(explored)
    return [next(e) if p in positions else next(r) for p in range(total)]
