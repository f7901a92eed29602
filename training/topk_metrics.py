"""Top-K ranking metrics over full rankings (every candidate scored, no sampled negatives).

Each function takes, per user, the recommended ids best first and the set of relevant ids, and
returns the mean over users that have at least one relevant item (users with none are skipped:
they say nothing about the ranking). Only the first ``k`` recommendations count; a list shorter
than ``k`` is scored as it is (missing positions earn nothing). Repeated ids in a list count once,
at their first position. Binary relevance throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def _pairs(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int):
    """(top-k without repeats, relevant set) per user with something relevant."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(recommended) != len(relevant):
        raise ValueError(f"{len(recommended)} recommendation lists but {len(relevant)} relevant sets")
    for recs, truth in zip(recommended, relevant):
        truth = set(truth)
        if truth:
            yield list(dict.fromkeys(recs))[:k], truth


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def recall_values(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int) -> list[float]:
    """|top-k ∩ relevant| / |relevant| of each user with something relevant."""
    return [len(set(top) & truth) / len(truth) for top, truth in _pairs(recommended, relevant, k)]


def recall_at_k(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / |relevant|."""
    return _mean(recall_values(recommended, relevant, k))


def standard_error(values: Sequence[float]) -> float:
    """Of the mean of `values` (NaN below two values)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def precision_at_k(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / k (k, not the list length: a short list is penalised)."""
    return _mean([len(set(top) & truth) / k for top, truth in _pairs(recommended, relevant, k)])


def hit_rate_at_k(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int) -> float:
    """Share of users with at least one relevant item in their top k."""
    return _mean([float(bool(set(top) & truth)) for top, truth in _pairs(recommended, relevant, k)])


def ndcg_at_k(recommended: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]], k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k, with gain 1 / log2(position + 2) per relevant hit."""
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    scores = []
    for top, truth in _pairs(recommended, relevant, k):
        dcg = sum(discounts[i] for i, item in enumerate(top) if item in truth)
        ideal = discounts[: min(len(truth), k)].sum()
        scores.append(dcg / ideal)
    return _mean(scores)
