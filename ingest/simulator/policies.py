"""Reference policies: baselines and the oracle upper bound to score learned policies against.

A policy is a callable (user_id, at, candidate_item_ids, k) -> slate (a list of at most k
distinct candidate ids, best first). Each factory binds a policy to one Marketplace, whose true
popularity / click probabilities it may read; seeded ones have their own RNG stream, so using a
policy never disturbs the marketplace's randomness.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from .marketplace import Marketplace

Policy = Callable[[str, datetime, Sequence[str], int], list[str]]
_POLICY_STREAM = 202  # spawn key of policy RNGs


def _rng(market: Marketplace, seed: int | None) -> np.random.Generator:
    if seed is not None:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(market.config.seed, spawn_key=(_POLICY_STREAM,)))


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest keys, largest first (argpartition: O(n), not a full sort)."""
    if k < len(keys):
        part = np.argpartition(-keys, k - 1)[:k]
        return part[np.argsort(-keys[part], kind="stable")]
    return np.argsort(-keys, kind="stable")


def popularity_policy(market: Marketplace, sample: bool = True, seed: int | None = None) -> Policy:
    """sample=True: k items drawn without replacement with probability proportional to popularity
    (Gumbel top-k, i.e. Plackett-Luce sampling); sample=False: the k most popular items."""
    rng = _rng(market, seed)

    def policy(user_id: str, at: datetime, candidates: Sequence[str], k: int) -> list[str]:
        keys = np.log(market.item_popularity(candidates))
        if sample:
            keys = keys + rng.gumbel(size=len(keys))
        return [candidates[int(i)] for i in _top_k(keys, k)]

    return policy


def oracle_policy(market: Marketplace) -> Policy:
    """The k items with the highest true click probability at position 0 (for this user, now)."""

    def policy(user_id: str, at: datetime, candidates: Sequence[str], k: int) -> list[str]:
        keys = market.click_probabilities(user_id, candidates, 0, at)
        return [candidates[int(i)] for i in _top_k(keys, k)]

    return policy


def random_policy(market: Marketplace, seed: int | None = None) -> Policy:
    """k candidates uniformly at random: the no-information baseline (and unbiased logging)."""
    rng = _rng(market, seed)

    def policy(user_id: str, at: datetime, candidates: Sequence[str], k: int) -> list[str]:
        return [candidates[int(i)] for i in rng.permutation(len(candidates))[:k]]

    return policy
