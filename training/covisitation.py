"""Two bundle components that serving's non-model candidate sources read, built at training time.

- `ItemCatalog`: every published item with its creator, category, publication time and its
  popularity in the training window. Serving uses it for availability (an item not in the catalog
  is not served), for the creator cap and the per-category features (creator, category of each
  candidate), for fresh items (newest first), and for the popularity and static rungs of the
  degradation ladder.
- `Covisitation`: item → the items most often engaged with by the same users close in time
  (within ``lookback`` interactions and ``window``), scored by users in common over the geometric
  mean of each item's users (cosine on user sets), so that a hit everybody clicks is not every
  item's neighbour. Serving's co-visitation source sums the neighbours of the user's recent items.

Both follow the bundle's save(dir) / load(dir) convention with plain files (Parquet, NumPy, JSON;
no pickles); each ``load`` checks the content hash written by ``save``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from eightbox.features.unseen_items import epoch_ns

FORMAT = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_meta(path: Path, data_file: Path, **meta) -> None:
    """The manifest, written last: its presence marks a whole save; it records the data file's hash."""
    path.write_text(json.dumps({"format": FORMAT, **meta, "sha256": _sha256(data_file)}, indent=2))


def _read_meta(path: Path, data_file: Path, what: str) -> dict:
    """The manifest, after checking its format and that `data_file` still hashes to it."""
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"unsupported {what} format {meta.get('format')!r}")
    if _sha256(data_file) != meta["sha256"]:
        raise ValueError(f"{data_file} does not match the hash recorded when it was saved")
    return meta


class ItemCatalog:
    """Published items, immutable after construction. Build with ``build`` or ``load``."""

    CATALOG_FILE, META_FILE = "catalog.parquet", "catalog.json"

    def __init__(self, items: pd.DataFrame, static_items: Sequence[str]):
        """`items`: item_id, creator_id, category, published_at (UTC), popularity; one row per item."""
        frame = items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
        self.frame = frame
        self.ids: tuple[str, ...] = tuple(frame["item_id"].astype(str))
        self._info = dict(zip(self.ids, zip(frame["creator_id"].astype(str), frame["category"].astype(str))))
        self._popularity = dict(zip(self.ids, frame["popularity"].astype(float)))
        published = pd.to_datetime(frame["published_at"], utc=True)
        # An item's age counts from its first publication (older catalogs kept only the latest).
        first = frame["first_published_at"] if "first_published_at" in frame else frame["published_at"]
        self._first_ns = dict(zip(self.ids, epoch_ns(first)))
        order = np.lexsort((np.asarray(self.ids), -published.astype("int64").to_numpy()))
        self._newest = tuple(self.ids[i] for i in order)  # newest first, ties by item id
        pop = frame["popularity"].to_numpy(dtype=float)
        self._popular = tuple(self.ids[i] for i in np.lexsort((np.asarray(self.ids), -pop)))
        self.static_items: tuple[str, ...] = tuple(static_items)

    @classmethod
    def build(cls, items: pd.DataFrame, interactions: pd.DataFrame | None = None,
              static_n: int = 100) -> ItemCatalog:
        """From ``items_from_events`` rows and (optionally) training-window interactions: popularity
        is each item's summed interaction weight (0 when it had none); the static list is the
        ``static_n`` most popular items."""
        frame = items[["item_id", "creator_id", "category", "published_at",
                       *(["first_published_at"] if "first_published_at" in items else [])]].copy()
        frame["item_id"] = frame["item_id"].astype(str)
        pop = (interactions.groupby("item_id")["weight"].sum() if interactions is not None and len(interactions)
               else pd.Series(dtype=float))
        frame["popularity"] = frame["item_id"].map(pop).fillna(0.0).astype(float)
        frame["published_at"] = pd.to_datetime(frame["published_at"], utc=True)
        catalog = cls(frame, ())
        catalog.static_items = catalog.popular(static_n)
        return catalog

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._info

    def __len__(self) -> int:
        return len(self.ids)

    def info(self, item_id: str) -> tuple[str, str] | None:
        """(creator_id, category) of an item, None when it is not in the catalog."""
        return self._info.get(item_id)

    def popularity(self, item_id: str) -> float:
        return self._popularity.get(item_id, 0.0)

    def published_ns(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's first publication in UTC nanoseconds since the epoch (float), NaN when unknown."""
        get = self._first_ns.get
        return np.fromiter((get(i, np.nan) for i in item_ids), dtype=np.float64, count=len(item_ids))

    def newest(self, n: int) -> tuple[str, ...]:
        """The n most recently published items, newest first."""
        return self._newest[:n]

    def popular(self, n: int | None = None) -> tuple[str, ...]:
        """Items by training-window popularity, most popular first (ties by item id)."""
        return self._popular if n is None else self._popular[:n]

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(d / self.CATALOG_FILE, index=False)
        _write_meta(d / self.META_FILE, d / self.CATALOG_FILE, n_items=len(self),
                    static_items=list(self.static_items))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ItemCatalog:
        d = Path(directory)
        meta = _read_meta(d / cls.META_FILE, d / cls.CATALOG_FILE, "catalog")
        return cls(pd.read_parquet(d / cls.CATALOG_FILE), meta["static_items"])


class Covisitation:
    """Top co-engaged neighbours per item, held as CSR arrays. Build with ``fit`` or ``load``."""

    ARRAYS_FILE, META_FILE = "covisitation.npz", "covisitation.json"

    def __init__(self, items: np.ndarray, offsets: np.ndarray, neighbors: np.ndarray, scores: np.ndarray,
                 params: dict):
        # Row r's neighbours: items[neighbors[offsets[r]:offsets[r + 1]]], best first.
        self.items, self.offsets, self.neighbors, self.scores = items, offsets, neighbors, scores
        self.params = dict(params)
        self._row = {item: r for r, item in enumerate(items.tolist())}

    @classmethod
    def fit(cls, interactions: pd.DataFrame, *, lookback: int = 10, window: timedelta = timedelta(hours=24),
            top_n: int = 50, min_users: int = 1) -> Covisitation:
        """From interactions (``interactions_from_events`` columns): two items co-occur for a user when
        one of them is among the ``lookback`` interactions before the other, at most ``window`` apart
        (order does not matter; each user counts a pair once). Keeps pairs with >= ``min_users`` users
        and each item's ``top_n`` best, by users(a, b) / sqrt(users(a) · users(b))."""
        params = {"lookback": lookback, "window_s": window.total_seconds(), "top_n": top_n, "min_users": min_users,
                  "interactions": int(len(interactions))}
        df = interactions.sort_values(["user_id", "event_time"], kind="stable")
        users = pd.factorize(df["user_id"].astype(str))[0]
        codes, items = pd.factorize(df["item_id"].astype(str), sort=True)
        items = np.asarray(items, dtype=str)
        t = pd.DatetimeIndex(pd.to_datetime(df["event_time"], utc=True)).as_unit("ns").asi8
        window_ns = int(window.total_seconds() * 1e9)
        parts = []
        for lag in range(1, min(lookback, max(len(df) - 1, 0)) + 1):
            ok = (users[lag:] == users[:-lag]) & (t[lag:] - t[:-lag] <= window_ns) & (codes[lag:] != codes[:-lag])
            u, a, b = users[lag:][ok], codes[:-lag][ok], codes[lag:][ok]
            parts += [np.stack([u, a, b], 1), np.stack([u, b, a], 1)]
        triples = np.unique(np.concatenate(parts), axis=0) if parts else np.zeros((0, 3), np.int64)
        pairs, together = np.unique(triples[:, 1:], axis=0, return_counts=True)  # (pairs, 2), users per pair
        seen = np.unique(np.stack([users, codes], 1), axis=0)  # distinct (user, item)
        item_users = np.bincount(seen[:, 1], minlength=len(items)).astype(np.float64)  # users per item
        keep = together >= min_users
        pairs, together = pairs[keep], together[keep]
        score = together / np.sqrt(item_users[pairs[:, 0]] * item_users[pairs[:, 1]]) if len(pairs) else np.zeros(0)
        order = np.lexsort((pairs[:, 1], -score, pairs[:, 0])) if len(pairs) else np.zeros(0, np.int64)
        pairs, score = pairs[order], score[order]
        rank = np.arange(len(pairs)) - np.searchsorted(pairs[:, 0], pairs[:, 0], side="left")
        top = rank < top_n
        pairs, score = pairs[top], score[top]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=len(items)))]).astype(np.int64)
        return cls(items, offsets, pairs[:, 1].astype(np.int32), score.astype(np.float32), params)

    def __len__(self) -> int:
        return len(self.items)

    def neighbors_of(self, item_id: str) -> list[tuple[str, float]]:
        """(neighbour, score) pairs of one item, best first; [] for an item never co-engaged."""
        r = self._row.get(item_id)
        if r is None:
            return []
        lo, hi = self.offsets[r], self.offsets[r + 1]
        return list(zip(self.items[self.neighbors[lo:hi]].tolist(), self.scores[lo:hi].tolist()))

    def related(self, seeds: Sequence[str], n: int, decay: float = 0.8) -> list[tuple[str, float]]:
        """Items co-engaged with `seeds` (newest first), best first: the sum over seeds of the pair
        score times ``decay ** seed position``. Seeds themselves are never returned."""
        total: dict[str, float] = {}
        for pos, seed in enumerate(seeds):
            weight = decay ** pos
            for other, s in self.neighbors_of(seed):
                total[other] = total.get(other, 0.0) + weight * s
        for seed in seeds:
            total.pop(seed, None)
        return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / self.ARRAYS_FILE, items=self.items, offsets=self.offsets, neighbors=self.neighbors,
                 scores=self.scores)
        _write_meta(d / self.META_FILE, d / self.ARRAYS_FILE, params=self.params, n_items=len(self),
                    n_pairs=int(len(self.scores)))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Covisitation:
        d = Path(directory)
        meta = _read_meta(d / cls.META_FILE, d / cls.ARRAYS_FILE, "covisitation")
        with np.load(d / cls.ARRAYS_FILE, allow_pickle=False) as z:
            return cls(z["items"], z["offsets"], z["neighbors"], z["scores"], meta["params"])
