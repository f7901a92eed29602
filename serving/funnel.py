"""The serving funnel: sources → union → filters → features → ranker → re-rank, degrading instead of failing.

Degradation ladder (each `Recommendation` names the rung that served it):

- ``full``: the primary sources (``FunnelConfig.primary_sources``, the two-tower ANN) answered and
  the ranker scored the candidates with online features: calibrated scores and the value formula.
- ``fallback``: candidates exist but the funnel ran without a part of it: the ranker (missing,
  failing, its breaker open, or no features because Redis is down: then candidates are ordered by
  their sources' own ranks, interleaved) or a primary source (the others' candidates, ranked).
- ``popularity``: no candidate survived (every source failed or was empty): the in-memory
  popularity list (`PopularityBoard`, refreshed from the online store; else training popularity).
- ``static``: nothing else answered, or the funnel itself raised: the bundle's static list (else
  ``FunnelConfig.static_items``), with only the creator cap applied.

Every stage reports ``n_in == n_out + n_filtered + n_deduped``, its latency, and a status (ok,
timeout, error, breaker_open, skipped). Dependencies are called under a timeout (bounded by the
request's total budget) and a circuit breaker: "redis" (history, features), "ann" (the two-tower
source), "ranker". `Funnel.recommend` does not raise for a dependency failure.

Experiments run the funnel once per arm's `ModelSet` (`recommend(models=..., arm=...)`; the
interleaved arm runs champion and challenger together with `recommend_each`, reading the user's
history once). The breakers of model-dependent calls ("ann", "ranker") are per arm (``ranker@challenger``),
so a failing challenger opens its own breakers and never the champion's; "redis" is shared.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from eightbox.features.unseen_items import ZERO_FOR_UNSEEN_ITEMS, age_days, fill_unseen_items
from eightbox.ranking.value import value_score
from eightbox.serving.breaker import Breakers
from eightbox.serving.candidates import Candidate
from eightbox.serving.models import ModelSet
from eightbox.serving.rerank import rerank_with_stats
from eightbox.serving.sources import PopularityBoard, Skipped, Source, UserContext, default_sources
from eightbox.serving.stages import CHAMPION, FunnelConfig, Recommendation, Run

log = logging.getLogger(__name__)
_UNREAD = object()  # history not read yet for this run


class Funnel:
    """Answers recommendation requests with the models in ``self.models`` (swap the reference to reload).

    `feature_readers(service)` returns a reader with ``read(user_id, item_ids, categories=, creators=)``
    (`features.online.OnlineReader`); `history_reader` has ``read_rows({"user_id": [...]})`` giving
    ``last_engaged_items``. Either may be None (the stages that need them are skipped)."""

    def __init__(self, models: ModelSet | None, sources: Sequence[Source], *,
                 feature_readers: Callable[[str], Any] | None = None, history_reader: Any | None = None,
                 board: PopularityBoard | None = None, config: FunnelConfig = FunnelConfig(),
                 breakers: Breakers | None = None, unavailable: frozenset[str] = frozenset()):
        self.models, self.sources, self.config = models, list(sources), config
        self.feature_readers, self.history_reader, self.board = feature_readers, history_reader, board
        self.breakers = breakers or Breakers()
        self.unavailable = frozenset(unavailable)  # taken-down items; replace the set to change it

    async def recommend(self, user_id: str, k: int = 10, context: Mapping[str, Any] | None = None,
                        request_id: str | None = None, *, models: ModelSet | None = None,
                        arm: str = CHAMPION) -> Recommendation:
        """At most min(k, k_max) items for `user_id`; never raises for a dependency failure.
        `models`: an experiment arm's models instead of ``self.models``; `arm` names the arm."""
        models = self.models if models is None else models  # one ModelSet for the whole request
        return await self._recommend(Run(self.config, arm), models, user_id, k, context, request_id)

    async def recommend_each(self, arms: Mapping[str, ModelSet], user_id: str, k: int = 10,
                             context: Mapping[str, Any] | None = None,
                             request_id: str | None = None) -> dict[str, Recommendation]:
        """One recommendation per arm for the same request, run concurrently, the user's history
        read once and shared (each recommendation reports that one history stage)."""
        request_id, first = request_id or uuid.uuid4().hex, Run(self.config)
        recent = await self._history(first, str(user_id))
        recs = await asyncio.gather(*(
            self._recommend(Run(self.config, arm, first.start, first.reports), models, user_id, k, context,
                            request_id, recent)
            for arm, models in arms.items()))
        return dict(zip(arms, recs))

    async def _recommend(self, run: Run, models: ModelSet | None, user_id: str, k: int,
                         context: Mapping[str, Any] | None, request_id: str | None,
                         recent: Any = _UNREAD) -> Recommendation:
        request_id = request_id or uuid.uuid4().hex
        k = max(0, min(int(k), self.config.k_max))
        try:
            if k == 0:
                run.report("funnel", "funnel", 0, 0, run.start, status="skipped", detail="k = 0")
                items, rung = [], "full"
            else:
                items, rung = await self._funnel(run, models, str(user_id), k, dict(context or {}), request_id,
                                                 recent)
        except Exception as exc:  # a bug, not a dependency: still answer, and say so
            log.exception("funnel failed for request %s", request_id)
            run.report("funnel", "funnel", 0, 0, time.perf_counter(), status="error",
                       detail=f"{type(exc).__name__}: {exc}")
            try:
                items, rung = self._static(run, models, k), "static"
            except Exception:  # not even the static list: an empty answer, still not an exception
                log.exception("static rung failed for request %s", request_id)
                items, rung = [], "static"
        return Recommendation(
            request_id=request_id, user_id=str(user_id), items=tuple(items), rung=rung, stages=tuple(run.reports),
            model_versions=dict(models.versions) if models else {},
            feature_names=models.features if models else (),
            latency_ms=round((time.perf_counter() - run.start) * 1e3, 3))

    async def _guarded(self, breaker: str | None, timeout_s: float,
                       call: Callable[[], Awaitable[Any]]) -> tuple[str, Any, str]:
        """(status, value, detail) of one dependency call; value is None unless status is "ok"."""
        cb = self.breakers[breaker] if breaker else None
        if cb is not None and not cb.allow():
            return "breaker_open", None, f"{breaker} breaker open"
        started, value = time.perf_counter(), None
        try:
            value = await asyncio.wait_for(call(), timeout_s)
            status, detail = "ok", ""
        except Skipped as exc:  # the dependency was not called: nothing to record
            return "skipped", None, str(exc)
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since Python 3.11
            status, detail = "timeout", f"no answer within {timeout_s * 1e3:.0f} ms"
        except Exception as exc:
            status, detail = "error", f"{type(exc).__name__}: {exc}"[:300]
        if cb is not None:
            cb.record(status == "ok", time.perf_counter() - started)
        return status, value, detail

    async def _funnel(self, run: Run, models: ModelSet | None, user_id: str, k: int, context: dict,
                      request_id: str, recent: Any = _UNREAD) -> tuple[list[Candidate], str]:
        if models is None:
            run.report("models", "bundle", 0, 0, run.start, status="skipped", detail="no models loaded")
            return await self._lower_rungs(run, None, k, set())
        if recent is _UNREAD:
            recent = await self._history(run, user_id)
        ctx = UserContext(user_id, request_id, k, models, tuple(recent or ()), context)
        results = await asyncio.gather(*(self._source(run, s, ctx) for s in self.sources))
        candidates = self._merge(run, results)
        candidates = self._filter(run, models, candidates, set(recent) if recent is not None else None)
        if candidates:
            ranked = await self._rank(run, models, user_id, candidates, _request_ns(context))
            primary_ok = all(status == "ok" for name, status, _ in results if name in self.config.primary_sources)
            if not ranked:
                _order_by_sources(candidates, [name for name, _, _ in results])
            final = self._rerank(run, models, candidates, k, request_id)
            if final:
                return (final, "full" if primary_ok else "fallback") if ranked else (_unscored(final), "fallback")
        return await self._lower_rungs(run, models, k, set(recent or ()))

    async def _lower_rungs(self, run: Run, models: ModelSet | None, k: int, engaged: set[str]):
        started = time.perf_counter()
        try:
            ranked = self.board.popular(models) if self.board else (
                models.catalog.popular() if models and models.catalog else ())
            popular = list(itertools.islice((i for i in ranked if i not in engaged and i not in self.unavailable),
                                            max(self.config.rerank_pool, k)))
            pool = [Candidate(i, "popularity", score=float(len(popular) - r), sources=["popularity"])
                    for r, i in enumerate(popular)]
            if models is not None:
                _enrich(models, pool, vectors=False)
            final, _ = rerank_with_stats(pool, replace(self.config.rerank, k=k, explore_share=0.0), "popularity")
            run.report("popularity", "board" if self.board and self.board.snapshot else "catalog", len(pool),
                       len(final), started, n_filtered=len(pool) - len(final))
            if final:
                return _unscored(final), "popularity"
        except Exception as exc:
            log.exception("popularity rung failed")
            run.report("popularity", "board", 0, 0, started, status="error", detail=f"{type(exc).__name__}: {exc}")
        return self._static(run, models, k), "static"

    def _static(self, run: Run, models: ModelSet | None, k: int) -> list[Candidate]:
        """The last rung: a fixed list, the creator cap its only rule; must not depend on anything."""
        started = time.perf_counter()
        catalog = models.catalog if models is not None else None
        ids = list(dict.fromkeys(catalog.static_items if catalog is not None else self.config.static_items))
        cap, per_creator, out = self.config.rerank.creator_cap, {}, []
        for item in ids:
            if len(out) >= k:
                break
            creator, category = (catalog.info(item) or (None, None)) if catalog is not None else (None, None)
            if cap is not None and creator is not None:
                if per_creator.get(creator, 0) >= cap:
                    continue
                per_creator[creator] = per_creator.get(creator, 0) + 1
            out.append(Candidate(item, "static", creator_id=creator, category=category, sources=["static"]))
        run.report("static", "catalog" if catalog is not None else "config", len(ids), len(out), started,
                   n_filtered=len(ids) - len(out))
        return out

    async def _history(self, run: Run, user_id: str) -> list[str] | None:
        """The user's recent engaged items (newest first), or None when they could not be read."""
        started = time.perf_counter()
        if self.history_reader is None:
            run.report("history", "redis", 0, 0, started, "history", status="skipped", detail="no history reader")
            return None

        def read() -> list[str]:
            return list(self.history_reader.read_rows({"user_id": [user_id]})["last_engaged_items"][0] or [])

        status, value, detail = await self._guarded("redis", run.timeout_s("history"), lambda: asyncio.to_thread(read))
        recent = value[: self.config.n_history] if status == "ok" else None
        n = len(recent or ())
        run.report("history", "redis", n, n, started, "history", status=status, detail=detail)
        return recent

    async def _source(self, run: Run, source: Source, ctx: UserContext) -> tuple[str, str, list[Candidate]]:
        started = time.perf_counter()
        status, value, detail = await self._guarded(run.breaker(source.breaker), run.timeout_s("sources"),
                                                    lambda: source(ctx))
        found = list(value or ())
        run.report(f"source:{source.name}", source.name, len(found), len(found), started, "sources",
                   status=status, detail=detail)
        return source.name, status, found

    def _merge(self, run: Run, results) -> list[Candidate]:
        """Union in source priority order; a duplicate adds its source to the first one's ``sources``.
        The first candidate of an item is kept and updated in place, not copied: sources return
        candidates of their own for each request (the `Source` contract)."""
        started, merged, n_in = time.perf_counter(), {}, 0
        for name, _, found in results:
            for c in found:
                n_in += 1
                first = merged.get(c.item_id)
                if first is None:
                    merged[c.item_id] = c
                    c.sources = list(dict.fromkeys([*c.sources, name]))
                else:
                    if name not in first.sources:
                        first.sources.append(name)
                    first.new_or_uncertain = first.new_or_uncertain or c.new_or_uncertain
        out = list(merged.values())
        run.report("merge", "+".join(r[0] for r in results), n_in, len(out), started, n_deduped=n_in - len(out))
        return out

    def _filter(self, run: Run, models: ModelSet, candidates: list[Candidate], engaged: set[str] | None):
        """Drop items the user engaged with (when the history is known) and unavailable items (not in
        the catalog, or taken down)."""
        started, catalog = time.perf_counter(), models.catalog
        out, n_engaged, n_unavailable = [], 0, 0
        for c in candidates:
            if engaged is not None and c.item_id in engaged:
                n_engaged += 1
            elif c.item_id in self.unavailable or (catalog is not None and c.item_id not in catalog):
                n_unavailable += 1
            else:
                out.append(c)
        detail = f"engaged {n_engaged}, unavailable {n_unavailable}" + (
            "" if engaged is not None else "; history unknown: engaged items not filtered") + (
            "" if catalog is not None else "; no catalog: availability not checked")
        run.report("filter", "catalog", len(candidates), len(out), started, n_filtered=n_engaged + n_unavailable,
                   detail=detail)
        _enrich(models, out, vectors=False)
        return out

    async def _rank(self, run: Run, models: ModelSet, user_id: str, candidates: list[Candidate],
                    at_ns: float) -> bool:
        """Fetch features and score in place; False when either could not be done. `at_ns`: the
        request's time (epoch ns), from which a never-counted item's age is taken."""
        n, started = len(candidates), time.perf_counter()
        why = ("no ranker in the bundle" if models.ranker is None else
               "no feature reader" if self.feature_readers is None else "")
        if why:
            run.report("features", "redis", n, n, started, "features", status="skipped", detail=why)
            run.report("rank", "ranker", n, n, started, "rank", status="skipped", detail=why)
            return False
        ids = [c.item_id for c in candidates]

        def read() -> dict[str, list]:
            return self.feature_readers(models.feature_service).read(
                user_id, ids, categories=[c.category or "" for c in candidates],
                creators=[c.creator_id or "" for c in candidates])

        status, rows, detail = await self._guarded("redis", run.timeout_s("features"), lambda: asyncio.to_thread(read))
        run.report("features", "redis", n, n, started, "features", status=status, detail=detail)
        if status != "ok":
            run.report("rank", "ranker", n, n, time.perf_counter(), "rank", status="skipped", detail="no features")
            return False
        missing = [None] * n
        # (n, features) float64 in the ranker's column order, None → NaN; built as one block, and
        # exactly what predict() is given and what the impression log records.
        matrix = np.array([rows.get(f, missing) for f in models.features], dtype=np.float64).reshape(-1, n).T
        frame = pd.DataFrame(matrix, columns=list(models.features))
        if models.feature_service in ZERO_FOR_UNSEEN_ITEMS and models.catalog is not None:
            fill_unseen_items(frame, age_days(models.catalog.published_ns(ids), at_ns))
            matrix = frame.to_numpy(dtype=np.float64)
        impressions = rows.get("item_impressions_7d", [None] * n)
        for c, imp in zip(candidates, impressions):
            c.new_or_uncertain = c.new_or_uncertain or imp is None or imp < self.config.uncertain_impressions
        started = time.perf_counter()

        def score() -> tuple[pd.DataFrame, np.ndarray]:
            pred = models.ranker.predict(frame)
            return pred, value_score(pred, self.config.value_weights)

        status, value, detail = await self._guarded(run.breaker("ranker"), run.timeout_s("rank"),
                                                    lambda: asyncio.to_thread(score))
        run.report("rank", str(getattr(models.ranker, "version", "") or "ranker"), n, n, started, "rank",
                   status=status, detail=detail)
        if status != "ok":
            return False
        pred, scores = value
        vectors = matrix.tolist()
        heads = {col: pred[col].to_numpy(dtype=float) for col in ("p_click", "p_engaged", "value") if col in pred}
        for r, c in enumerate(candidates):
            c.score = float(scores[r])
            c.p_click, c.p_engaged, c.value = (float(heads[h][r]) if h in heads else None
                                               for h in ("p_click", "p_engaged", "value"))
            c.features = dict(zip(models.features, vectors[r]))
        return True

    def _rerank(self, run: Run, models: ModelSet, candidates: list[Candidate], k: int, request_id: str):
        started, cfg = time.perf_counter(), self.config
        order = sorted(range(len(candidates)),
                       key=lambda i: math.inf if candidates[i].score is None else -candidates[i].score)
        pool = [candidates[i] for i in order[: cfg.rerank_pool]]
        pool += [candidates[i] for i in order[cfg.rerank_pool:] if candidates[i].new_or_uncertain][: cfg.explore_pool]
        if cfg.mmr_vectors:
            _enrich(models, pool, vectors=True)
        final, stats = rerank_with_stats(pool, replace(cfg.rerank, k=k), request_id)
        run.report("rerank", "mmr", len(candidates), len(final), started, "rerank",
                   n_filtered=len(candidates) - len(final) - stats.n_duplicates, n_deduped=stats.n_duplicates,
                   detail=f"pool {len(pool)}, capped {stats.n_capped}, "
                          f"explored {stats.n_explored}/{stats.explore_slots}")
        return final


def _request_ns(context: Mapping[str, Any]) -> float:
    """The request's time in epoch nanoseconds: the trusted `request_time` of a simulated-time run, else now."""
    at = context.get("request_time")
    return float(pd.Timestamp(at).value) if at is not None else time.time() * 1e9  # naive means UTC


def _enrich(models: ModelSet, candidates: list[Candidate], vectors: bool) -> None:
    """Fill creator and category from the catalog (and the item vector, when asked and known)."""
    catalog = models.catalog
    for c in candidates:
        if catalog is not None and c.creator_id is None:
            c.creator_id, c.category = catalog.info(c.item_id) or (None, None)
        if vectors and c.embedding is None:
            v = models.item_vectors.get(c.item_id)
            c.embedding = v.tolist() if v is not None else None


def _unscored(items: list[Candidate]) -> list[Candidate]:
    """Clear the order-only scores given for re-ranking: a score is the value formula's or None."""
    for c in items:
        c.score = None
    return items


def _order_by_sources(candidates: list[Candidate], source_order: list[str]) -> None:
    """Without the ranker: interleave the sources by rank (each source's best first, in priority
    order), expressed as a descending ``score`` so the re-ranker keeps that order as relevance."""
    priority = {name: p for p, name in enumerate(source_order)}
    rank: dict[str, int] = {}
    key = {}
    for c in candidates:
        s = c.source
        rank[s] = rank.get(s, -1) + 1
        key[c.item_id] = (rank[s], priority.get(s, len(priority)))
    candidates.sort(key=lambda c: key[c.item_id])
    for pos, c in enumerate(candidates):
        c.score = float(len(candidates) - pos)


def build_funnel(settings, models: ModelSet | None, config: FunnelConfig = FunnelConfig(), *,
                 redis_timeout_s: float = 0.05, refresh_s: float = 5.0, breakers: Breakers | None = None) -> Funnel:
    """A `Funnel` wired to the online store of `settings` (the Feast registry must be applied;
    nothing connects to Redis until the first read). Request-path reads use a client whose socket
    timeouts are `redis_timeout_s`; the board's whole-catalog reads a slower one. Call
    ``funnel.board.start()`` inside the running event loop to begin trending refreshes."""
    import redis

    from eightbox.features.online import OnlineReader
    from eightbox.features.store import get_store

    store = get_store(settings)
    fast = redis.Redis.from_url(settings.redis_address, socket_timeout=redis_timeout_s,
                                socket_connect_timeout=redis_timeout_s)
    slow = redis.Redis.from_url(settings.redis_address, socket_timeout=5.0, socket_connect_timeout=1.0)
    readers: dict[str, OnlineReader] = {}

    def feature_readers(service: str) -> OnlineReader:
        if service not in readers:  # one per feature service; built once (reads only the Feast registry)
            readers[service] = OnlineReader(settings, service, store=store, client=fast, cache_s={
                "item_id": config.item_cache_s, "creator_id": config.item_cache_s})
        return readers[service]

    funnel = Funnel(models, [], feature_readers=feature_readers, config=config, breakers=breakers,
                    history_reader=OnlineReader(settings, "user_history_v1", store=store, client=fast))
    funnel.board = PopularityBoard(OnlineReader(settings, list(PopularityBoard.FEATURES), store=store, client=slow),
                                   lambda: funnel.models, refresh_s)
    funnel.sources = default_sources(config.per_source, funnel.board)
    if models is not None:
        feature_readers(models.feature_service)
    return funnel
