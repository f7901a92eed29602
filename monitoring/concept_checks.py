"""Concept drift: has the link between what a feature says about a user and what they click changed?

Feature PSI sees inputs move, not tastes: after a taste drift the inputs look as before (a user's
history still names the categories they used to like) while the clicks go elsewhere. The
champion's own scores hide it too, because they lean on that history. What does move is how well
the history predicts the clicks, which needs no model at all:

    lift = CTR where the user has engaged with the item's category before (the taste feature > 0)
           / CTR on the other scored impressions

each CTR taken relative to what its slots would get on average (observed clicks over the window's
CTR at each position summed over the rows), since a ranker puts familiar categories in the top
slots and the top slots get clicked more whatever they show. The check is the lift's relative drop
against the previous window, judged by the ``concept_drift`` threshold: a world whose tastes hold
keeps its lift from day to day even while the models, the catalog and the counters change, and one
whose tastes moved loses it within a day.

Measured in `make demo` and the closed-loop test: docs/loop.md, "Detecting the drift".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .results import CheckResult, judged
from .thresholds import Threshold

LAYER = "model"
CHECK = "concept_drift"
TASTE_FEATURES = ("uc_affinity_30d",)  # the user's engagement share of the item's category, 30 days
MIN_ROWS = 200  # fewer matured impressions than this on either side of the split: no_data


def taste_lift(click: np.ndarray, position: np.ndarray, taste: np.ndarray) -> tuple[float, int, int]:
    """(position-adjusted CTR lift of rows with taste > 0 over the rest, rows with, rows without);
    NaN when either side has fewer than `MIN_ROWS` rows or no clicks."""
    y = np.asarray(click, dtype=float)
    pos = np.asarray(position, dtype=int)
    known = np.nan_to_num(np.asarray(taste, dtype=float), nan=0.0) > 0
    n_known, n_rest = int(known.sum()), int((~known).sum())
    if n_known < MIN_ROWS or n_rest < MIN_ROWS:
        return float("nan"), n_known, n_rest
    # Expected clicks of each row: its slot's CTR in the window (both sides together).
    slot_ctr = pd.Series(y).groupby(pos).mean()
    expected = slot_ctr.reindex(pos).to_numpy()
    o_known, e_known = y[known].sum(), expected[known].sum()
    o_rest, e_rest = y[~known].sum(), expected[~known].sum()
    if min(o_known, o_rest, e_known, e_rest) <= 0:
        return float("nan"), n_known, n_rest
    return float((o_known / e_known) / (o_rest / e_rest)), n_known, n_rest


def _times(lift: float) -> str:
    return f"{lift:.2f}×" if np.isfinite(lift) else "(too few rows to say)"


def concept_checks(current: pd.DataFrame, previous: pd.DataFrame, threshold: Threshold,
                   features=TASTE_FEATURES) -> list[CheckResult]:
    """One check per taste feature present: the lift's relative drop from `previous` to `current`.
    Both frames: one row per matured, ranker-scored impression with ``click``, ``position`` and the
    logged value of each feature (NaN where it was missing)."""
    out = []
    for name in features:
        if name not in current.columns:
            continue
        now, n1, n0 = taste_lift(current["click"], current["position"], current[name])
        if name in previous.columns:
            before, _, _ = taste_lift(previous["click"], previous["position"], previous[name])
        else:
            before = float("nan")
        drop = (before - now) / before if np.isfinite(before) and np.isfinite(now) and before > 0 else float("nan")
        out.append(judged(LAYER, CHECK, name, drop, threshold,
                          f"clicks where {name} > 0 ran {_times(now)} the rest's (position-adjusted) now, "
                          f"{_times(before)} in the previous window ({n1} vs {n0} matured impressions)"))
    return out
