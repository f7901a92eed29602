"""Status from a value and its thresholds: stable / watch / act, configurable per check.

The bands follow the seed's PSI rule: below `watch` is stable, `watch` to `act` (inclusive) is
watch, above `act` is act. Every threshold is "higher is worse" (a drop in a KPI is expressed as a
positive relative drop), so one comparison serves all checks. Defaults live in `DEFAULTS`; the
setting ``monitoring_thresholds`` overrides any of them by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

STABLE, WATCH, ACT = "stable", "watch", "act"
NO_DATA = "no_data"  # nothing to measure in the window (no rows, no matured labels, no scrape)
INFO = "info"  # a measurement reported for context (a KPI's level); never an alert by itself
STATUSES = (STABLE, WATCH, ACT, NO_DATA, INFO)


@dataclass(frozen=True)
class Threshold:
    watch: float
    act: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.watch) and math.isfinite(self.act)) or self.watch > self.act:
            raise ValueError(f"a threshold needs finite watch <= act, got watch={self.watch} act={self.act}")

    def status(self, value: float | None) -> str:
        """stable below `watch`, watch in [watch, act], act above `act`; no_data for None/NaN."""
        if value is None or not math.isfinite(value):
            return NO_DATA
        if value > self.act:
            return ACT
        return WATCH if value >= self.watch else STABLE


DEFAULTS: dict[str, Threshold] = {
    "psi": Threshold(0.1, 0.2),  # feature PSI against the training reference (the seed's bands)
    "score_psi": Threshold(0.1, 0.2),  # model score PSI against the reference's score bins
    "shadow_score_psi": Threshold(0.1, 0.25),  # challenger's shadow scores vs the champion's, same requests
    "null_rate_increase": Threshold(0.02, 0.05),  # live null rate minus training null rate
    "out_of_range": Threshold(0.01, 0.05),  # share of live values outside the training [min, max]
    "unseen_category": Threshold(0.01, 0.05),  # share of live rows in a category training never saw
    "ece": Threshold(0.03, 0.05),  # calibration error on matured labels (the gate's ceiling is 0.05)
    # relative drop of the taste lift (`concept_checks`) vs the previous window: in `make demo`
    # 7 % before the drift, 38 % on the drift day, 18 % three days after it
    "concept_drift": Threshold(0.15, 0.25),
    "kpi_drop": Threshold(0.10, 0.25),  # relative drop of CTR / engagement / coverage vs the previous window
    "stage_p99_s": Threshold(0.05, 0.1),  # p99 of one funnel stage, seconds (the request budget is 0.1 s)
    "stage_p50_s": Threshold(0.01, 0.05),
    "error_rate": Threshold(0.001, 0.01),  # 5xx answers / all answers
    "shed_rate": Threshold(0.01, 0.05),  # 429 answers / all answers
    "consumer_lag": Threshold(10_000, 100_000),  # events the archiver group has yet to read
    "feature_staleness_s": Threshold(300, 1800),  # window end minus the newest streamed feature value
}


def thresholds(overrides: Mapping[str, tuple[float, float] | list[float]] | None = None) -> dict[str, Threshold]:
    """`DEFAULTS` with `overrides` ({name: (watch, act)}) on top; an unknown name is an error."""
    unknown = sorted(set(overrides or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown monitoring thresholds {unknown}; known: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS)
    for name, (watch, act) in (overrides or {}).items():
        out[name] = Threshold(float(watch), float(act))
    return out
