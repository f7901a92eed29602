"""Product-layer KPIs by segment: CTR, engagement rate and catalog coverage, and their drops.

Segments: a user is **returning** in a window when they clicked or engaged with anything in the
`lookback` before the window starts, and **new** otherwise (first visit, or back after a long
absence: a recommender knows as little about either). ``all`` is every user.

- ``ctr``: share of matured impressions with an attributed click; ``engagement_rate``: the same
  for engagements (labels as in `training.labels`: attribution window, last touch).
- ``coverage``: distinct items shown in the window / items in the catalog (published by the end).
Each KPI is reported as an ``info`` check, and its relative drop against the previous window of
the same length as a ``<kpi>_drop`` check judged by the ``kpi_drop`` threshold.
"""

from __future__ import annotations

import pandas as pd

from .results import CheckResult, judged
from .thresholds import INFO, NO_DATA, Threshold

LAYER = "product"
NEW, RETURNING, ALL = "new", "returning", "all"
SEGMENTS = (ALL, NEW, RETURNING)
KPIS = ("ctr", "engagement_rate", "coverage")
Kpis = dict[tuple[str, str], tuple[float, int]]  # (kpi, segment) -> (value, rows it was measured on)


def returning_users(activity: pd.DataFrame, start: pd.Timestamp, lookback: pd.Timedelta) -> set[str]:
    """Users with a click or engagement (rows of `activity`: user_id, event_time) in [start - lookback, start)."""
    t = activity["event_time"]
    return set(activity.loc[(t >= start - lookback) & (t < start), "user_id"].astype(str))


def segment_of(users: pd.Series, returning: set[str]) -> pd.Series:
    return users.astype(str).map(lambda u: RETURNING if u in returning else NEW)


def kpis(labelled: pd.DataFrame, shown: pd.DataFrame, catalog_size: int) -> Kpis:
    """KPIs per segment. `labelled`: matured impressions (segment, click, engaged); `shown`: every
    impression of the window (segment, item_id)."""
    out: Kpis = {}
    for seg in SEGMENTS:
        lab = labelled if seg == ALL else labelled[labelled["segment"] == seg]
        imp = shown if seg == ALL else shown[shown["segment"] == seg]
        nan = float("nan")
        out[("ctr", seg)] = (float(lab["click"].mean()) if len(lab) else nan, len(lab))
        out[("engagement_rate", seg)] = (float(lab["engaged"].mean()) if len(lab) else nan, len(lab))
        cover = imp["item_id"].nunique() / catalog_size if catalog_size and len(imp) else nan
        out[("coverage", seg)] = (float(cover), len(imp))
    return out


def product_checks(current: Kpis, previous: Kpis, threshold: Threshold) -> list[CheckResult]:
    """Each KPI as ``info``, and its relative drop vs `previous` (the window before) judged."""
    out = []
    for (kpi, seg), (value, rows) in current.items():
        status = INFO if rows else NO_DATA
        out.append(CheckResult(LAYER, kpi, seg, value, status, detail=f"{rows} impressions"))
        before, before_rows = previous.get((kpi, seg), (float("nan"), 0))
        drop = (before - value) / before if before_rows and rows and before > 0 else float("nan")
        out.append(judged(LAYER, f"{kpi}_drop", seg, drop, threshold,
                          f"{value:.4f} now vs {before:.4f} in the previous window"))
    return out


def daily_ctr(labelled: pd.DataFrame) -> pd.DataFrame:
    """CTR per UTC day and segment (``all`` included): day, segment, impressions, clicks, ctr."""
    cols = ["day", "segment", "impressions", "clicks", "ctr"]
    if labelled.empty:
        return pd.DataFrame(columns=cols)
    df = labelled.assign(day=labelled["event_time"].dt.floor("D"))
    both = pd.concat([df, df.assign(segment=ALL)], ignore_index=True)
    out = both.groupby(["day", "segment"]).agg(impressions=("click", "size"), clicks=("click", "sum")).reset_index()
    out["ctr"] = out["clicks"] / out["impressions"]
    return out[cols]
