"""The typed outcome of monitoring: one `CheckResult` per measured thing, collected in a
`MonitoringResult` for one window, with the series the report plots."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pandas as pd

from .thresholds import ACT, Threshold

LAYERS = ("system", "data", "model", "product")


@dataclass(frozen=True)
class CheckResult:
    """One check: `layer` (system/data/model/product), `check` (what is measured, e.g. "psi"),
    `subject` (which feature, stage, score or segment; "" when none), its `value`, the thresholds
    it was judged by (None for measurements without one) and the resulting `status`."""

    layer: str
    check: str
    subject: str
    value: float
    status: str
    watch: float | None = None
    act: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}: one of {LAYERS}")

    @property
    def alert(self) -> str:
        """One line naming what is wrong, e.g. "data/null_rate_increase[item_ctr_7d] = 0.4 > 0.05: ..."."""
        where = f"{self.layer}/{self.check}" + (f"[{self.subject}]" if self.subject else "")
        bound = f" > {self.act:g}" if self.act is not None else ""
        return f"{where} = {self.value:.4g}{bound}" + (f": {self.detail}" if self.detail else "")


def judged(layer: str, check: str, subject: str, value: float, threshold: Threshold, detail: str = "") -> CheckResult:
    """A check whose status comes from `threshold`."""
    value = float(value) if value is not None else math.nan
    return CheckResult(layer, check, subject, value, threshold.status(value), threshold.watch, threshold.act, detail)


@dataclass
class MonitoringResult:
    """Every check of one window [start, end) against one champion, plus what the report plots:
    `score_bins` (bin, reference, live shares per score), `daily` (day, segment, impressions, clicks,
    ctr) and `calibration` (bin, mean_p, rate, rows)."""

    start: datetime
    end: datetime
    model_name: str
    model_version: str
    checks: list[CheckResult]
    score_bins: pd.DataFrame = field(default_factory=pd.DataFrame)
    daily: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def alerts(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == ACT]

    def find(self, layer: str, check: str, subject: str = "") -> CheckResult | None:
        return next((c for c in self.checks if (c.layer, c.check, c.subject) == (layer, check, subject)), None)

    def to_frame(self) -> pd.DataFrame:
        """One row per check, with the window and model: the `monitoring` lake table's rows."""
        rows = [asdict(c) for c in self.checks]
        df = pd.DataFrame(rows, columns=["layer", "check", "subject", "value", "status", "watch", "act", "detail"])
        df.insert(0, "model_version", self.model_version)
        df.insert(0, "model_name", self.model_name)
        df.insert(0, "window_end", pd.Timestamp(self.end))
        df.insert(0, "window_start", pd.Timestamp(self.start))
        return df.astype({"value": "float64", "watch": "float64", "act": "float64"})
