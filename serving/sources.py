"""Candidate sources: each proposes items for one request, independently of the others.

A source is any object with a ``name``, a ``breaker`` (the circuit-breaker name guarding it, or
None for in-memory work) and ``async def __call__(ctx: UserContext) -> list[Candidate]``. The funnel
runs them concurrently, each under its timeout; a source returns its candidates best first, with
``item_id``, ``source`` and ``retrieval_score`` set (the funnel adds creator, category and vectors
after the union, once), as new `Candidate` objects for each call: the funnel updates them in place. A source that cannot run for this request (its component is missing from
the bundle, no data yet) raises `Skipped`; any other exception is a failure the breaker counts.

Nothing here blocks the event loop for long: FAISS search and the user tower go through
``asyncio.to_thread``; trending items come from an in-memory snapshot that `PopularityBoard`
refreshes in the background from the online store, never on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from eightbox.serving.background import BackgroundLoop
from eightbox.serving.candidates import Candidate
from eightbox.serving.models import ModelSet

log = logging.getLogger(__name__)


class Skipped(Exception):
    """The source cannot run for this request (a missing component, no data yet): not a failure."""


@dataclass(frozen=True)
class UserContext:
    """What a source may know about one request."""

    user_id: str
    request_id: str
    k: int
    models: ModelSet
    recent_items: tuple[str, ...] = ()  # the user's last engaged items, newest first; () if unknown
    context: Mapping[str, Any] = field(default_factory=dict)  # the request's client context (surface, ...)


class Source(Protocol):
    name: str
    breaker: str | None

    async def __call__(self, ctx: UserContext) -> list[Candidate]: ...


def _ranked(items, source: str, new: bool = False) -> list[Candidate]:
    """(item_id, score) pairs, best first → candidates of `source`."""
    return [Candidate(item_id=i, source=source, retrieval_score=float(s), sources=[source], new_or_uncertain=new)
            for i, s in items]


class TwoTowerSource:
    """The user tower's embedding of the user (id + recent items) → top-n by inner product in the
    ANN index. Asks the index for ``n + len(recent)`` so that dropping engaged items leaves ~n."""

    name, breaker = "two_tower", "ann"

    def __init__(self, n: int = 200):
        self.n = n

    async def __call__(self, ctx: UserContext) -> list[Candidate]:
        models = ctx.models
        if models.index is None:
            raise Skipped("no ANN index in the bundle")
        if models.user_tower is None:
            raise Skipped("no user tower in the bundle")
        return await asyncio.to_thread(self._search, ctx)

    def _search(self, ctx: UserContext) -> list[Candidate]:
        query = ctx.models.user_tower(ctx.user_id, ctx.recent_items)  # (1, dim), tagged with its encoder
        ids, scores = ctx.models.index.search(query, self.n + len(ctx.recent_items))
        return _ranked(zip(ids[0], scores[0].tolist()), self.name)


class CovisitSource:
    """Items co-engaged with the user's ``seeds`` most recent items (training-time co-visitation)."""

    name, breaker = "covisit", None

    def __init__(self, n: int = 100, seeds: int = 10):
        self.n, self.seeds = n, seeds

    async def __call__(self, ctx: UserContext) -> list[Candidate]:
        if ctx.models.covisitation is None:
            raise Skipped("no co-visitation table in the bundle")
        return _ranked(ctx.models.covisitation.related(ctx.recent_items[: self.seeds], self.n), self.name)


class FreshSource:
    """The newest published items of the catalog, flagged for exploration (cold start)."""

    name, breaker = "fresh", None

    def __init__(self, n: int = 50):
        self.n = n

    async def __call__(self, ctx: UserContext) -> list[Candidate]:
        if ctx.models.catalog is None:
            raise Skipped("no item catalog in the bundle")
        newest = ctx.models.catalog.newest(self.n)
        return _ranked(((item, len(newest) - r) for r, item in enumerate(newest)), self.name, new=True)


class TrendingSource:
    """The most clicked items of the last 15 minutes (streaming ``item_clicks_15m``, ties by the daily
    ``item_trending``), from the board's latest snapshot."""

    name, breaker = "trending", None

    def __init__(self, board: PopularityBoard, n: int = 100):
        self.board, self.n = board, n

    async def __call__(self, ctx: UserContext) -> list[Candidate]:
        snapshot = self.board.snapshot
        if snapshot is None:
            raise Skipped("no trending snapshot yet")
        return _ranked(snapshot.trending[: self.n], self.name)


@dataclass(frozen=True)
class Snapshot:
    trending: tuple[tuple[str, float], ...]  # (item, clicks_15m + tie-break), the `keep` best with any signal
    popular: tuple[str, ...]  # every read item by item_popularity_7d (then training popularity), best first
    taken_at: float  # time.monotonic() when read
    n_items: int


@dataclass(frozen=True)
class _CatalogArrays:
    """What a refresh needs of one catalog, computed once per catalog (it changes only with the models)."""

    catalog: Any
    ids: list[str]
    names: np.ndarray  # (items,) the ids
    name_rank: np.ndarray  # (items,) each id's place in sorted order: ties by id without sorting strings
    trained: np.ndarray  # (items,) training-window popularity

    @classmethod
    def of(cls, catalog) -> _CatalogArrays:
        ids = list(catalog.ids)
        names = np.asarray(ids)
        name_rank = np.empty(len(ids), dtype=np.int64)
        name_rank[np.argsort(names, kind="stable")] = np.arange(len(ids))
        trained = np.fromiter((catalog.popularity(i) for i in ids), dtype=np.float64, count=len(ids))
        return cls(catalog, ids, names, name_rank, trained)


class PopularityBoard(BackgroundLoop):
    """Item rankings read from the online store for the whole catalog, in the background.

    `reader` (``OnlineReader`` with the three `FEATURES`) gives ``read_rows({"item_id": [...]})`` and
    ``read_nonzero("item_id", ids, "item_clicks_15m")``. `refresh` replaces ``snapshot`` by
    reference; a failed refresh keeps the previous snapshot and records ``last_error``.
    ``popular(models)`` is the popularity rung's list.

    The 15-minute clicks are read every refresh, sparsely: Redis returns only the items with clicks.
    The daily counters (trend, 7-day popularity: they change once a day, at materialization) are
    read for every item every `daily_s` and on a new catalog, so the board's view of them is at most
    that much older than Redis's. Reads go in chunks of `chunk` items, each one server-side script:
    a small one keeps the request path's reads from waiting behind it in Redis. Trending keeps the
    `keep` best items (the source asks for far fewer).
    """
    task_name = "popularity-board"

    FEATURES = ("item_session:item_clicks_15m", "item_daily:item_trending", "item_daily:item_popularity_7d")

    def __init__(self, reader, models: Callable[[], ModelSet | None], interval_s: float = 5.0,
                 chunk: int = 2_000, keep: int = 1_000, daily_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.reader, self.models, self.interval_s, self.chunk, self.keep = reader, models, interval_s, chunk, keep
        self.daily_s, self.clock = daily_s, clock
        self.snapshot: Snapshot | None = None
        self.last_error: str | None = None
        self._arrays: _CatalogArrays | None = None
        self._daily: tuple[float, np.ndarray, tuple[str, ...]] | None = None  # (read at, trend, popular)

    def refresh(self) -> Snapshot | None:
        """Read the counters now (blocking: call it from a thread)."""
        models = self.models()
        if models is None or models.catalog is None:
            return self.snapshot
        now = self.clock()
        if self._arrays is None or self._arrays.catalog is not models.catalog:
            self._arrays, self._daily = _CatalogArrays.of(models.catalog), None
        a = self._arrays
        if self._daily is None or now - self._daily[0] >= self.daily_s:
            self._daily = self._read_daily(a, now)
        _, trend, popular = self._daily
        clicks = np.zeros(len(a.ids))
        for start in range(0, len(a.ids), self.chunk):
            for i, value in self.reader.read_nonzero("item_id", a.ids[start:start + self.chunk],
                                                     "item_clicks_15m").items():
                clicks[start + i] = value
        # Clicks dominate; the daily trend (a ratio) only breaks ties between equal counts: atan < π/2.
        score = clicks + 1e-3 * np.arctan(trend)
        live = np.flatnonzero(score > 0)
        if 0 < self.keep < len(live):  # the `keep` best, and every item tied with the last of them
            kth = np.partition(score[live], len(live) - self.keep)[len(live) - self.keep]
            live = live[score[live] >= kth]
        order = live[np.lexsort((a.name_rank[live], -score[live]))][: self.keep]
        trending = tuple(zip(a.names[order].tolist(), score[order].tolist()))
        self.snapshot = Snapshot(trending, popular, time.monotonic(), len(a.ids))
        self.last_error = None
        return self.snapshot

    def _read_daily(self, a: _CatalogArrays, now: float) -> tuple[float, np.ndarray, tuple[str, ...]]:
        """Every item's daily trend, and the popularity order (7-day counts, then training popularity)."""
        trend: list = []
        pop: list = []
        for start in range(0, len(a.ids), self.chunk):
            rows = self.reader.read_rows({"item_id": a.ids[start:start + self.chunk]})
            trend += rows["item_trending"]
            pop += rows["item_popularity_7d"]

        def values(column: list) -> np.ndarray:  # None (no value in Redis) → 0
            return np.nan_to_num(np.array(column, dtype=np.float64))

        popular = tuple(a.names[np.lexsort((a.name_rank, -a.trained, -values(pop)))].tolist())
        return now, values(trend), popular

    def popular(self, models: ModelSet | None) -> tuple[str, ...]:
        """The latest snapshot's popularity order, else the catalog's training-time order, else ()."""
        if self.snapshot is not None and self.snapshot.popular:
            return self.snapshot.popular
        return models.catalog.popular() if models is not None and models.catalog is not None else ()

    async def run(self) -> None:
        """Refresh every ``interval_s`` until cancelled; errors are logged and the snapshot kept."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("trending refresh failed (keeping the previous snapshot): %s", self.last_error)
            await asyncio.sleep(self.interval_s)


def default_sources(per_source: Mapping[str, int], board: PopularityBoard) -> list[Source]:
    """The four sources, in priority order (a candidate's ``source`` is the first that found it)."""
    n = per_source
    return [TwoTowerSource(n["two_tower"]), CovisitSource(n["covisit"]), TrendingSource(board, n["trending"]),
            FreshSource(n["fresh"])]
