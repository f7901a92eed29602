"""Data-layer checks: live feature values against the champion's training reference.

`live` is one row per served impression and one column per feature name, as the ranker saw it
(an impression that did not log a feature has NaN there, which is what "null" means live: the
serving log leaves missing values out). Each feature gets:

- ``schema``: the reference has it and live data lacks the column (``missing``), live data has a
  column the reference never saw (``new``), or its kind changed (numeric <-> categorical, e.g. an
  upstream job started sending strings). Any schema change is ``act``; a feature with one gets no
  other checks.
- ``null_rate_increase``: live null rate minus the training null rate.
- ``psi``: PSI of the live values over the reference's decile bins (`psi.numeric_psi`).
- ``out_of_range``: share of live non-null values outside the training [min, max].
- ``unseen_category`` (categorical columns): share of live rows in categories training never saw,
  beyond the share the reference had already pooled as ``__other__``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .psi import OTHER, category_shares, numeric_psi
from .results import CheckResult, judged
from .thresholds import ACT, Threshold

LAYER = "data"
NUMERIC, CATEGORICAL = "numeric", "categorical"


def kind_of(series: pd.Series) -> str:
    """numeric for number dtypes and for object columns whose non-null values are all numbers."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return NUMERIC
    values = series.dropna()
    numbers = values.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool))
    return NUMERIC if len(values) and numbers.all() else CATEGORICAL


def reference_kinds(reference: Mapping) -> dict[str, str]:
    """{column: numeric | categorical} as the reference recorded them."""
    return {**{f: NUMERIC for f in reference.get("features", {})},
            **{c: CATEGORICAL for c in reference.get("categorical", {})}}


def schema_checks(reference: Mapping, live: pd.DataFrame) -> list[CheckResult]:
    """One ``act`` check per missing, new or re-typed column (see the module docstring)."""
    expected, out = reference_kinds(reference), []
    for name, kind in expected.items():
        if name not in live.columns:
            out.append(CheckResult(LAYER, "schema", name, 1.0, ACT, detail=f"missing: training had this {kind} "
                                   "column, live data has none"))
        elif (now := kind_of(live[name])) != kind and live[name].notna().any():
            out.append(CheckResult(LAYER, "schema", name, 1.0, ACT, detail=f"type changed: {kind} in training, "
                                   f"{now} live (e.g. {live[name].dropna().iloc[0]!r})"))
    for name in live.columns:
        if name not in expected:
            out.append(CheckResult(LAYER, "schema", name, 1.0, ACT, detail="new: live data has a column "
                                   "the training reference does not"))
    return out


def numeric_checks(name: str, summary: Mapping, values: pd.Series, th: Mapping[str, Threshold]) -> list[CheckResult]:
    """null-rate increase, PSI and out-of-range share of one numeric feature."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    present = x[np.isfinite(x)]
    live_null = 1.0 - len(present) / len(x) if len(x) else float("nan")
    ref_null = float(summary.get("null_rate", 0.0))
    out = [judged(LAYER, "null_rate_increase", name, live_null - ref_null, th["null_rate_increase"],
                  f"null rate {live_null:.1%} live vs {ref_null:.1%} in training")]
    out.append(judged(LAYER, "psi", name, numeric_psi(summary, present), th["psi"]))
    lo, hi = summary.get("min"), summary.get("max")
    outside = float(np.mean((present < lo) | (present > hi))) if len(present) and lo is not None else float("nan")
    out.append(judged(LAYER, "out_of_range", name, outside, th["out_of_range"],
                      f"training range [{lo:g}, {hi:g}]" if lo is not None else "no training range"))
    return out


def categorical_checks(name: str, summary: Mapping, values: pd.Series,
                       th: Mapping[str, Threshold]) -> list[CheckResult]:
    """null-rate increase and unseen-category share of one categorical column."""
    live_null = float(values.isna().mean()) if len(values) else float("nan")
    ref_null = float(summary.get("null_rate", 0.0))
    ref = summary.get("shares", {})
    live = category_shares(values, ref)
    unseen = max(live.get(OTHER, 0.0) - ref.get(OTHER, 0.0), 0.0) if live else float("nan")
    named = {k for k in ref if k != OTHER}
    examples = sorted(set(values.dropna().astype(str)) - named)[:3]
    return [judged(LAYER, "null_rate_increase", name, live_null - ref_null, th["null_rate_increase"],
                   f"null rate {live_null:.1%} live vs {ref_null:.1%} in training"),
            judged(LAYER, "unseen_category", name, unseen, th["unseen_category"],
                   f"e.g. {', '.join(examples)}" if examples else "")]


def data_checks(reference: Mapping, live: pd.DataFrame, th: Mapping[str, Threshold]) -> list[CheckResult]:
    """Every data-layer check of `live` (numeric features and categorical columns) against `reference`."""
    schema = schema_checks(reference, live)
    broken = {c.subject for c in schema}
    out = list(schema)
    for name, summary in reference.get("features", {}).items():
        if name not in broken:
            out += numeric_checks(name, summary, live[name], th)
    for name, summary in reference.get("categorical", {}).items():
        if name not in broken:
            out += categorical_checks(name, summary, live[name], th)
    return out
