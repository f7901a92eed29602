"""Circuit-breaker states on /metrics: one gauge per breaker, named for it, 0 closed, 1 half-open, 2 open."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from eightbox.serving.breaker import BreakerPolicy, Breakers
from eightbox.serving.metrics import ServingMetrics, breaker_gauges


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_breaker_is_a_gauge_that_follows_its_state_through_open_half_open_and_closed():
    clock = Clock()
    breakers = Breakers(default=BreakerPolicy(min_calls=2, window_calls=2, open_seconds=5.0), clock=clock)
    metrics = ServingMetrics()
    metrics.add_stats("breaker", lambda: breaker_gauges(breakers.states()), "Circuit breaker state")

    def gauges() -> dict[str, float]:
        return {s.name: s.value for f in text_string_to_metric_families(metrics.render().decode())
                for s in f.samples if s.name.startswith("eightbox_breaker_")}

    breakers["redis"], breakers["ranker@challenger"]
    assert gauges() == {"eightbox_breaker_redis": 0.0, "eightbox_breaker_ranker_challenger": 0.0}
    for _ in range(2):
        breakers["ranker@challenger"].record(False, 0.01)
    assert gauges() == {"eightbox_breaker_redis": 0.0, "eightbox_breaker_ranker_challenger": 2.0}
    clock.now += 5.0
    assert gauges()["eightbox_breaker_ranker_challenger"] == 1.0  # its interval passed: one trial call allowed
    assert breakers["ranker@challenger"].allow()
    breakers["ranker@challenger"].record(True, 0.01)
    assert gauges()["eightbox_breaker_ranker_challenger"] == 0.0
