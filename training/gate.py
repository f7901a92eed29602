"""The promotion gate: may a candidate model replace the champion? A pure function of two metric dicts.

Each threshold names a metric and the direction in which it is good:

- `max_drop`: higher is better (recall@k, NDCG, AUC); the candidate may fall at most this fraction
  of the champion's value below it: ``candidate >= champion - max_drop * |champion|``.
- `max_rise`: lower is better (log loss, calibration error); the candidate may rise at most this
  fraction of the champion's value above it: ``candidate <= champion + max_rise * |champion|``.
- `floors` / `ceilings`: absolute bounds that hold with or without a champion (``ece <= 0.05``).

Small test windows make metrics noisy (recall over 30 users moves by ±0.1 from one window to the
next). With `noise_z` > 0 a relative check widens by that many standard errors of the difference
wherever both sides report ``<metric>_se``: the gate refuses what it can tell is worse, not what
chance made look worse. Floors and ceilings stay absolute.

A metric a threshold names must be in the candidate's metrics and finite, or the gate refuses: a
renamed metric fails loudly instead of silently passing. A relative check is skipped when the
champion lacks the metric (it predates it) or when there is no champion at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class GateThresholds:
    max_drop: Mapping[str, float] = field(default_factory=dict)
    """Higher-is-better metric → largest allowed relative drop vs the champion (0.02 = 2 %)."""

    max_rise: Mapping[str, float] = field(default_factory=dict)
    """Lower-is-better metric → largest allowed relative rise vs the champion (0.05 = 5 %)."""

    floors: Mapping[str, float] = field(default_factory=dict)
    """Metric → smallest allowed value, champion or not."""

    ceilings: Mapping[str, float] = field(default_factory=dict)
    """Metric → largest allowed value, champion or not (e.g. ``{"ece": 0.05}``)."""

    noise_z: float = 0.0
    """Standard errors of the difference added to each relative tolerance (0: off; 1.645: one-sided 95 %)."""

    def __post_init__(self) -> None:
        if not 0 <= self.noise_z < math.inf:
            raise ValueError(f"noise_z = {self.noise_z}: a number of standard errors is >= 0")
        for kind in ("max_drop", "max_rise"):
            for metric, fraction in getattr(self, kind).items():
                if not 0 <= fraction < math.inf:
                    raise ValueError(f"{kind}[{metric!r}] = {fraction}: a relative tolerance is >= 0")

    def to_dict(self) -> dict:
        return {k: v if isinstance(v, float) else dict(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "GateThresholds":
        return cls(**{k: float(v) if k == "noise_z" else dict(v) for k, v in data.items()})

    def metrics(self) -> set[str]:
        """Every metric some threshold names."""
        return {m for kind in (self.max_drop, self.max_rise, self.floors, self.ceilings) for m in kind}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]
    """One sentence per refusal, naming the metric, both values and the threshold; empty on a pass."""

    def __bool__(self) -> bool:
        return self.passed


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def gate(candidate: Mapping[str, float], champion: Mapping[str, float] | None,
         thresholds: GateThresholds) -> GateResult:
    """Check `candidate` against `thresholds`, relative ones against `champion` (None: no champion,
    so absolute floors and ceilings only). Passes iff every check holds; reasons are sorted by metric."""
    reasons: dict[str, list[str]] = {}

    def refuse(metric: str, sentence: str) -> None:
        reasons.setdefault(metric, []).append(sentence)

    usable: dict[str, float] = {}
    for metric in sorted(thresholds.metrics()):
        if metric not in candidate:
            refuse(metric, f"{metric} is missing from the candidate's metrics, and the gate checks it.")
        elif not math.isfinite(value := float(candidate[metric])):
            refuse(metric, f"{metric} is {value} for the candidate, not a finite number.")
        else:
            usable[metric] = value

    for metric, floor in thresholds.floors.items():
        if metric in usable and usable[metric] < floor:
            refuse(metric, f"{metric} is {_fmt(usable[metric])}, below the floor of {_fmt(floor)}.")
    for metric, ceiling in thresholds.ceilings.items():
        if metric in usable and usable[metric] > ceiling:
            refuse(metric, f"{metric} is {_fmt(usable[metric])}, above the ceiling of {_fmt(ceiling)}.")

    champion = champion or {}

    def noise(metric: str) -> tuple[float, str]:
        """The widening of `metric`'s tolerance by noise, and how to say it."""
        se = math.hypot(float(candidate.get(f"{metric}_se", math.nan)), float(champion.get(f"{metric}_se", math.nan)))
        if thresholds.noise_z <= 0 or not math.isfinite(se):
            return 0.0, ""
        return thresholds.noise_z * se, f" plus {thresholds.noise_z:g} standard errors of the difference ({_fmt(se)})"

    for metric, fraction in thresholds.max_drop.items():
        if metric in usable and math.isfinite(base := float(champion.get(metric, math.nan))):
            widen, said = noise(metric)
            if usable[metric] < base - fraction * abs(base) - widen:
                change = (base - usable[metric]) / abs(base) if base else math.inf
                refuse(metric, f"{metric} fell {change:.2%} vs the champion ({_fmt(base)} → "
                               f"{_fmt(usable[metric])}); the gate allows a drop of at most {fraction:.2%}{said}.")
    for metric, fraction in thresholds.max_rise.items():
        if metric in usable and math.isfinite(base := float(champion.get(metric, math.nan))):
            widen, said = noise(metric)
            if usable[metric] > base + fraction * abs(base) + widen:
                change = (usable[metric] - base) / abs(base) if base else math.inf
                refuse(metric, f"{metric} rose {change:.2%} vs the champion ({_fmt(base)} → "
                               f"{_fmt(usable[metric])}); the gate allows a rise of at most {fraction:.2%}{said}.")

    ordered = [sentence for metric in sorted(reasons) for sentence in reasons[metric]]
    return GateResult(passed=not ordered, reasons=ordered)
