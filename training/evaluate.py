"""Offline evaluation on the temporal test window: every model beside its baselines, same users,
same split, same exclusions, computed in one run.

Retrieval is **full ranking** (every catalog item is a candidate; nothing is sampled): a user's
relevant set is the items they interacted with in the test window, their train items are excluded
from every list. The funnel figure re-ranks each logged test request's slate by a score and
reports NDCG@10 against its clicks (the slate, not the catalog: impressions are what we have labels
for), beside the same slates ordered by popularity and at random.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from eightbox.training import baselines
from eightbox.training.topk_metrics import ndcg_at_k, precision_at_k, recall_at_k, recall_values, standard_error

KS = (50, 100, 200)


def held_out_targets(train: pd.DataFrame, test: pd.DataFrame) -> tuple[list[str], list[set[str]], dict[str, set[str]]]:
    """(users with a test item not seen in their train rows, their relevant sets, train items per user)."""
    seen = train.groupby("user_id")["item_id"].agg(set).to_dict()
    relevant = test.groupby("user_id")["item_id"].agg(set)
    users, sets = [], []
    for u, items in relevant.items():
        new = items - seen.get(u, set())
        if new:
            users.append(u)
            sets.append(new)
    return users, sets, seen


def topk_report(lists: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int] = KS,
                extra: bool = False) -> dict[str, float]:
    out = {f"recall@{k}": round(recall_at_k(lists, relevant, k), 4) for k in ks}
    for k in ks:  # few test users make recall noisy: its standard error lets the gate tell a drop from chance
        out[f"recall@{k}_se"] = round(standard_error(recall_values(lists, relevant, k)), 4)
    out["ndcg@10"] = round(ndcg_at_k(lists, relevant, 10), 4)
    if extra:
        out["p@10"] = round(precision_at_k(lists, relevant, 10), 4)
    return out


def two_tower_lists(model, index, users: Sequence[str], as_of: datetime | Mapping[str, datetime],
                    history: pd.DataFrame, exclude: Mapping[str, set[str]], k: int) -> list[list[str]]:
    """Top-k of the ANN index for each user's embedding (history strictly before `as_of`),
    the user's train items removed (the search asks for enough extra to refill the list)."""
    if isinstance(as_of, Mapping):  # one time per user (leave-last-out: just before their test item)
        as_of = [as_of[u] for u in users]
    queries = model.user_embeddings(list(users), as_of, history)
    margin = max((len(exclude.get(u, ())) for u in users), default=0)
    ids, _ = index.search(queries, k + margin)
    return [[i for i in row if i and i not in exclude.get(u, set())][:k] for u, row in zip(users, ids)]


def retrieval_quality(model, index, train: pd.DataFrame, test: pd.DataFrame, catalog: Sequence[str],
                      as_of: datetime | Mapping[str, datetime], ks: Sequence[int] = KS, itemknn: bool = False,
                      oracle: Callable[[str, Sequence[str]], np.ndarray] | None = None, extra: bool = False,
                      seed: int = 0, history: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """{model name: {recall@K..., ndcg@10[, p@10]}} for the two-tower and every baseline.
    `history`: what the user tower reads (default `train`; the rows the model was fitted with)."""
    users, relevant, seen = held_out_targets(train, test)
    if not users:
        raise ValueError("no test user has a new item in the test window: nothing to evaluate")
    k = max(max(ks), 10)
    lists = {
        "two_tower": two_tower_lists(model, index, users, as_of, train if history is None else history, seen, k),
        "popularity": baselines.recommend_popular(users, train, catalog, seen, k),
        "random": baselines.recommend_random(users, catalog, seen, k, seed=seed),
    }
    if itemknn:
        lists["itemknn"] = baselines.recommend_itemknn(users, train, catalog, seen, k)
    if oracle is not None:
        lists["oracle"] = baselines.recommend_oracle(users, catalog, seen, k, oracle)
    report = {name: topk_report(ls, relevant, ks, extra) for name, ls in lists.items()}
    report["users"] = {"evaluated": len(users)}
    return report


def _slate_ndcg(df: pd.DataFrame, score: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over requests with at least one click, ranking each request's rows by `score`."""
    frame = pd.DataFrame({"r": df["request_id"].to_numpy(), "y": df["click"].to_numpy(float), "s": score})
    total, n = 0.0, 0
    for _, g in frame.groupby("r", sort=False):
        if g["y"].sum() <= 0:
            continue
        gains = g["y"].to_numpy()[np.argsort(-g["s"].to_numpy(), kind="stable")][:k]
        ideal = np.sort(g["y"].to_numpy())[::-1][:k]
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        total += float((gains * disc[:len(gains)]).sum() / (ideal * disc[:len(ideal)]).sum())
        n += 1
    return round(total / n, 4) if n else float("nan")


def funnel_ndcg(test: pd.DataFrame, scores: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """NDCG@10 of each logged test slate re-ordered by each score, plus random (same seed)."""
    out = {name: _slate_ndcg(test, np.asarray(s, dtype=float)) for name, s in scores.items()}
    out["random"] = _slate_ndcg(test, np.random.default_rng(seed).random(len(test)))
    return out
