"""Retrieval baselines, scored the same way as the two-tower so every figure has a neighbour:
popularity, random, ItemKNN (item-item cosine) and, on the simulator, the oracle.

Each ``recommend_*`` returns one ranked list of item ids per user (length k), never repeating an
item the user interacted with in training (``exclude``): the model's lists follow the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse


def _top(scores: np.ndarray, ids: np.ndarray, exclude: set[str], k: int) -> list[str]:
    order = np.argsort(-scores, kind="stable")
    out = []
    for j in order:
        if ids[j] not in exclude:
            out.append(str(ids[j]))
            if len(out) == k:
                break
    return out


def popularity_scores(train: pd.DataFrame, catalog: Sequence[str]) -> np.ndarray:
    """Train-window interaction weight per catalog item (0 for items never interacted with)."""
    counts = train.groupby("item_id")["weight"].sum() if "weight" in train else train["item_id"].value_counts()
    return pd.Series(list(catalog)).map(counts).fillna(0.0).to_numpy(dtype=float)


def recommend_popular(users: Sequence[str], train: pd.DataFrame, catalog: Sequence[str],
                      exclude: Mapping[str, set[str]], k: int) -> list[list[str]]:
    ids, scores = np.asarray(catalog, dtype=object), popularity_scores(train, catalog)
    return [_top(scores, ids, exclude.get(u, set()), k) for u in users]


def recommend_random(users: Sequence[str], catalog: Sequence[str], exclude: Mapping[str, set[str]], k: int,
                     seed: int = 0) -> list[list[str]]:
    rng, ids = np.random.default_rng(seed), np.asarray(catalog, dtype=object)
    return [_top(rng.random(len(ids)), ids, exclude.get(u, set()), k) for u in users]


def recommend_itemknn(users: Sequence[str], train: pd.DataFrame, catalog: Sequence[str],
                      exclude: Mapping[str, set[str]], k: int, neighbours: int = 100) -> list[list[str]]:
    """ItemKNN (Sarwar et al.): cosine similarity between item columns of the binary user-item
    matrix, each item keeping its `neighbours` most similar; a user's score for an item is the sum
    of its similarities to the user's train items. Users without train items get popularity."""
    ids = np.asarray(catalog, dtype=object)
    col = {item: j for j, item in enumerate(catalog)}
    pairs = train[train["item_id"].isin(col)].drop_duplicates(["user_id", "item_id"])
    uidx = {u: i for i, u in enumerate(pairs["user_id"].unique())}
    m = sparse.csr_matrix((np.ones(len(pairs)), (pairs["user_id"].map(uidx), pairs["item_id"].map(col))),
                          shape=(len(uidx), len(ids)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=0))).ravel() + 1e-9
    sim = (m.T @ m).toarray() / np.outer(norms, norms)  # (items, items)
    np.fill_diagonal(sim, 0.0)
    if neighbours < len(ids):  # keep each item's strongest neighbours only
        cut = np.partition(sim, -neighbours, axis=1)[:, -neighbours][:, None]
        sim = np.where(sim >= cut, sim, 0.0)
    pop = popularity_scores(train, catalog)
    out = []
    for u in users:
        row = uidx.get(u)
        scores = pop if row is None else np.asarray(m[row] @ sim).ravel() + 1e-9 * pop
        out.append(_top(scores, ids, exclude.get(u, set()), k))
    return out


def recommend_oracle(users: Sequence[str], catalog: Sequence[str], exclude: Mapping[str, set[str]], k: int,
                     click_probability: Callable[[str, Sequence[str]], np.ndarray]) -> list[list[str]]:
    """Items by the simulator's true click probability (at the top position): the ceiling."""
    ids = np.asarray(catalog, dtype=object)
    return [_top(np.asarray(click_probability(u, list(catalog)), dtype=float), ids, exclude.get(u, set()), k)
            for u in users]
