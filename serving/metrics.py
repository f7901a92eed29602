"""The serving API's Prometheus metrics, in a registry of its own per app.

A per-app `CollectorRegistry` (never the process-global default) keeps two apps in one process, and
the tests that build many, from clashing over metric names. `GET /metrics` renders `render()`.

Labels are bounded: `endpoint` is a route template of the app or "other" (never a raw path a client
chose), `stage` and `rung` come from the funnel's fixed vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds. The funnel's budget is 0.1 s, so the interesting resolution is below it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
"""A breaker's state as a gauge value: above 0, calls to that dependency are being short-circuited."""


def breaker_gauges(states: Mapping[str, str]) -> dict[str, float]:
    """`Breakers.states()` (name → state) → one number per breaker, for `ServingMetrics.add_stats`
    (names such as ``ranker@challenger`` become valid metric names: ``ranker_challenger``)."""
    return {re.sub(r"[^a-zA-Z0-9_]", "_", name): BREAKER_STATES.get(state, -1.0) for name, state in states.items()}


class _StatsCollector(Collector):
    """Exposes a `stats()` snapshot (name → number) as gauges `eightbox_<prefix>_<name>`, read at
    scrape time, so components keep plain counters and need not know about Prometheus."""

    def __init__(self, prefix: str, stats: Callable[[], Mapping[str, float]], doc: str):
        self._prefix, self._stats, self._doc = prefix, stats, doc

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            snapshot = self._stats()
        except Exception:  # a broken component must not break the scrape of everything else
            return
        for name, value in snapshot.items():
            if isinstance(value, (int, float)):
                yield GaugeMetricFamily(f"eightbox_{self._prefix}_{name}", f"{self._doc}: {name}", value=value)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("eightbox_http_requests", "HTTP requests answered, by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("eightbox_http_request_duration_seconds", "HTTP request latency, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("eightbox_funnel_stage_duration_seconds",
                                       "Latency of each funnel stage, as the funnel reported it",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_status = Counter("eightbox_funnel_stage", "Funnel stage outcomes, by stage and status",
                                    ["stage", "status"], registry=r)
        self.rungs = Counter("eightbox_recommend_rung", "Recommendations served, by degradation-ladder rung",
                             ["rung"], registry=r)
        self.shed = Counter("eightbox_shed", "Requests refused with 429 by the concurrency limit",
                            ["endpoint"], registry=r)
        self.recommend_errors = Counter("eightbox_recommend_failures",
                                        "Funnel calls that raised, timed out or returned a malformed answer",
                                        ["reason"], registry=r)
        self.events = Counter("eightbox_events_published", "Client events acknowledged by the broker, by type",
                              ["event_type"], registry=r)

    def add_stats(self, prefix: str, stats: Callable[[], Mapping[str, float]], doc: str) -> None:
        """Publish a component's `stats()` (e.g. the limiter, the impression logger) as gauges."""
        self.registry.register(_StatsCollector(prefix, stats, doc))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_recommendation(self, rung: str, stages: Iterable[tuple[str, str, float]]) -> None:
        """One served list: its rung and its stages as (name, status, latency_ms)."""
        self.rungs.labels(rung).inc()
        for name, status, latency_ms in stages:
            self.stage_latency.labels(name).observe(latency_ms / 1000.0)
            self.stage_status.labels(name, status).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

