"""Daily item features of an item that is published but not yet counted, the same in training and serving.

The daily batch writes an item_daily row only for an item that had events that day, so an item
published since the last batch, or never shown since, has no row: its features were missing (NaN).
A missing value is not "unknown" here: as of the last batch the item had no impressions, clicks or
engagements. Left NaN, XGBoost sent those rows down a default direction learnt per split from the
few of them in training, and models ranked never-shown items high: one put two thirds of its
impressions on them (docs/loop.md, "The first champion and new items"). So a feature service in
`ZERO_FOR_UNSEEN_ITEMS` reads such an item as counted at zero: counts 0, the derived columns of
zero counts (prior CTR, no trend), and its age from its publication to the scoring time.

An item with no publication before that time (unknown to the catalog) keeps NaN: nothing is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eightbox.features import specs

ZERO_FOR_UNSEEN_ITEMS = frozenset({"ranker_v2"})
"""Feature services that read a published, never-counted item as zero counts (`fill_unseen_items`).
`ranker_v1` models were trained on the NaNs, so they keep getting them."""

ITEM_TABLE = "item_daily"
AGE = "item_age_days"
DAY_S = 86_400.0


def unseen_item_values() -> dict[str, float]:
    """item_daily's columns for an item with no events, except its age (which depends on the time)."""
    counts = {s.name: 0.0 for s in specs.DAILY if s.table == ITEM_TABLE}
    derived = {"item_ctr_1d": specs.smoothed_ctr(0, 0), "item_ctr_7d": specs.smoothed_ctr(0, 0),
               "item_popularity_7d": 0.0, "item_trending": specs.trending(0, 0)}
    return {**counts, **derived}


def age_days(published_ns: np.ndarray, at_ns: np.ndarray | float) -> np.ndarray:
    """Days from publication to `at`, per row, both as UTC nanoseconds since the epoch (float, NaN
    for an unknown item); NaN where the item was unknown or not yet published."""
    days = (np.asarray(at_ns, dtype=np.float64) - np.asarray(published_ns, dtype=np.float64)) / (DAY_S * 1e9)
    with np.errstate(invalid="ignore"):
        return np.where(days > 0, days, np.nan)


def epoch_ns(times: pd.Series) -> np.ndarray:
    """Timestamps (tz-aware, naive meaning UTC, or NaT) as float nanoseconds since the epoch, NaT → NaN."""
    ts = pd.to_datetime(times, utc=True)
    return np.where(ts.isna(), np.nan, ts.dt.tz_convert(None).astype("datetime64[ns]").astype("int64")).astype(float)


def fill_unseen_items(frame: pd.DataFrame, ages: np.ndarray) -> pd.DataFrame:
    """`frame` (rows = candidates or examples, columns = features) with item_daily's columns filled
    where a row has none of them and a known age (`age_days`); in place, and returned. Rows that
    have an item_daily row, or no publication, are left as they are."""
    values = {c: v for c, v in unseen_item_values().items() if c in frame.columns}
    columns = [*values, *([AGE] if AGE in frame.columns else [])]
    if not columns or frame.empty:
        return frame
    unseen = frame[columns].isna().all(axis=1).to_numpy() & np.isfinite(ages)
    if unseen.any():
        for column, value in values.items():
            frame.loc[unseen, column] = value
        if AGE in frame.columns:
            frame.loc[unseen, AGE] = ages[unseen]
    return frame
