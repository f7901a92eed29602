"""One request through the funnel: its stage budgets (`FunnelConfig`), its clock (`Run`), what each
stage reports (`StageReport`) and what it answers (`Recommendation`). `serving/funnel.py` runs the stages."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eightbox.ranking.value import ValueWeights
from eightbox.serving.candidates import Candidate
from eightbox.serving.rerank import RerankConfig

CHAMPION = "champion"  # the arm whose breakers carry the plain dependency names
MODEL_BREAKERS = frozenset({"ann", "ranker"})  # calls that depend on an arm's models: breakers per arm


@dataclass(frozen=True)
class StageBudget:
    budget_ms: float  # the target: a report over it says so (``over_budget``)
    timeout_ms: float  # the hard limit: the stage is abandoned (status "timeout")


@dataclass(frozen=True)
class FunnelConfig:
    k_max: int = 100  # a request's k is capped here
    per_source: Mapping[str, int] = field(default_factory=lambda: {
        "two_tower": 200, "covisit": 100, "trending": 100, "fresh": 50})
    stages: Mapping[str, StageBudget] = field(default_factory=lambda: {
        "history": StageBudget(3, 15), "sources": StageBudget(20, 40), "features": StageBudget(8, 25),
        "rank": StageBudget(15, 40), "rerank": StageBudget(5, 20)})
    total_timeout_ms: float = 100.0  # no stage may run past this, counted from the request's start
    rerank: RerankConfig = RerankConfig()  # its k is replaced by the request's k
    rerank_pool: int = 100  # best-scored candidates handed to the re-ranker ...
    explore_pool: int = 20  # ... plus this many new-or-uncertain ones outside them (exploration)
    uncertain_impressions: float = 50.0  # fewer 7-day impressions than this (or none) = new or uncertain
    primary_sources: tuple[str, ...] = ("two_tower",)  # a response without them is not "full"
    n_history: int = 20  # recent items read for the user
    # Item vectors for MMR similarity (else the category). Off by default: rerank.py computes cosines in
    # pure Python, 7 ms for a pool of 120 at dim 32 vs 0.8 ms with categories (2-core dev machine).
    mmr_vectors: bool = False
    value_weights: ValueWeights = ValueWeights()
    # Item and creator features (the same for every user) are kept in process this long after a read
    # and served from there: at most this much older than Redis's, the item rows of one second's
    # requests read once. 0: every request reads them.
    item_cache_s: float = 1.0
    static_items: tuple[str, ...] = ()  # the last rung when the bundle has no catalog

    def timeout_s(self, stage: str) -> float:
        return self.stages[stage].timeout_ms / 1000.0


@dataclass(frozen=True)
class StageReport:
    name: str  # history, source:<name>, merge, filter, features, rank, rerank, popularity, static, funnel
    source: str  # what did the work: a source name, "redis", the ranker's version, ...
    n_in: int
    n_out: int
    n_filtered: int = 0
    n_deduped: int = 0
    latency_ms: float = 0.0
    status: str = "ok"  # ok | timeout | error | breaker_open | skipped
    budget_ms: float | None = None
    detail: str = ""

    @property
    def over_budget(self) -> bool:
        return self.budget_ms is not None and self.latency_ms > self.budget_ms


@dataclass(frozen=True)
class Recommendation:
    request_id: str
    user_id: str
    items: tuple[Candidate, ...]  # best first; features = the exact vector the ranker scored (NaN = missing)
    rung: str
    stages: tuple[StageReport, ...]
    model_versions: Mapping[str, str]
    feature_names: tuple[str, ...]  # the ranker's column order for items[i].features
    latency_ms: float

    def stage(self, name: str) -> StageReport | None:
        return next((s for s in self.stages if s.name == name), None)


class Run:
    """One request's clock and stage reports, for one arm's models."""

    def __init__(self, config: FunnelConfig, arm: str = CHAMPION, start: float | None = None,
                 reports: Sequence[StageReport] = ()):
        self.config, self.arm, self.reports = config, arm, list(reports)
        self.start = time.perf_counter() if start is None else start

    def breaker(self, name: str | None) -> str | None:
        """The breaker of dependency `name` for this run's arm."""
        if name in MODEL_BREAKERS and self.arm != CHAMPION:
            return f"{name}@{self.arm}"
        return name

    def remaining_s(self) -> float:
        return self.config.total_timeout_ms / 1000.0 - (time.perf_counter() - self.start)

    def timeout_s(self, stage: str) -> float:
        return max(0.0, min(self.config.timeout_s(stage), self.remaining_s()))

    def report(self, name: str, source: str, n_in: int, n_out: int, started: float, budget: str | None = None,
               **kw) -> StageReport:
        budget_ms = self.config.stages[budget].budget_ms if budget in self.config.stages else None
        r = StageReport(name, source, n_in, n_out, latency_ms=round((time.perf_counter() - started) * 1e3, 3),
                        budget_ms=budget_ms, **kw)
        self.reports.append(r)
        return r
