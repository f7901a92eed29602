"""Labels for served impressions: what the user did after seeing an item, and only what is final.

One row per served impression (`ImpressionServed`), labelled from the clicks and engagements that
followed it:

- ``click``: an `ItemClicked` attributed to the impression (below); ``engaged``: an `ItemEngaged`
  attributed the same way; ``value``: the sum of the attributed engagements' ``value``.
- **Attribution.** An event belongs to an impression with the same ``request_id`` and ``item_id``;
  an event without a ``request_id`` falls back to the same ``user_id`` and ``item_id``. It must
  happen within the attribution window: ``impression time <= event time <= impression time +
  window``. An event that could belong to several impressions goes to the latest one shown at or
  before it (last touch), so one click never labels two rows.
- **As of a build time.** Only labels with ``event_time <= as_of`` count (nothing from after the
  build), and only impressions with ``event_time <= as_of - label_delay`` are kept: their labels are
  final. ``label_delay`` must be at least the attribution window, otherwise an impression near the
  cut would still have part of its window in the future, and a click that has not happened *yet*
  would be recorded as a negative — a label that changes when the dataset is rebuilt later.

The logged feature vector (`ImpressionServed.features`, what the ranker saw when it scored the item)
becomes one column per feature name, taken from that impression's own event only: an impression
that did not log a feature gets NaN, never a value logged by another impression.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Union

import pandas as pd
import pyarrow as pa

__all__ = ["BASE_COLUMNS", "ID_COLUMNS", "LABEL_COLUMNS", "attach_labels", "events_frame", "utc"]

EXAMPLE_ID = "example_id"
ID_COLUMNS = (EXAMPLE_ID, "request_id", "user_id", "item_id", "position", "event_time",
              "experiment_arm", "model_versions")
"""Who saw what, where and when; ``example_id`` is the impression's event_id (unique per row)."""
LABEL_COLUMNS = ("click", "engaged", "value")
BASE_COLUMNS = ID_COLUMNS + LABEL_COLUMNS
"""Every example starts with these columns, in this order; feature columns follow."""

Frame = Union[pd.DataFrame, pa.Table]
_MAPS = ("features", "model_versions")  # map<,> columns: arrow gives lists of (key, value) pairs


def utc(ts) -> pd.Timestamp:
    """A timestamp (datetime, string, pandas) as a UTC `pd.Timestamp`; naive means UTC."""
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def events_frame(data: Frame, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Lake events (an Arrow table from `ingest.lake.read_events`, or a DataFrame of the same
    columns) as pandas: one row per ``event_id`` (the first), ``event_time`` as datetime64[ns, UTC],
    map columns as dicts, and every name in `columns` present (missing ones are all None)."""
    df = data.to_pandas() if isinstance(data, pa.Table) else data.copy()
    for name in columns:
        if name not in df.columns:
            df[name] = None
    for name in _MAPS:
        if name in df.columns:
            df[name] = [_as_dict(v) for v in df[name]]
    if "event_time" in df.columns:
        df["event_time"] = pd.to_datetime(df["event_time"], utc=True).astype("datetime64[ns, UTC]")
    if "event_id" in df.columns:
        df = df.drop_duplicates("event_id", ignore_index=True)
    return df.reset_index(drop=True)


def _as_dict(value) -> dict:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return {}
    return dict(value)  # a dict already, or arrow's [(key, value), ...]


def attach_labels(impressions: Frame, clicks: Frame, engagements: Frame, attribution_window: timedelta,
                  as_of: datetime, label_delay: timedelta) -> pd.DataFrame:
    """One row per served impression with ``event_time <= as_of - label_delay``, columns
    `BASE_COLUMNS` then the logged feature names (sorted); sorted by (event_time, example_id).

    ``click`` and ``engaged`` are 0/1 (int8), ``value`` the summed engagement value (0.0 without
    one); labels come only from events with ``event_time <= as_of`` attributed as the module
    docstring says. ``model_versions`` is the impression's dict as canonical JSON. Raises
    ValueError unless ``0 < attribution_window <= label_delay``.
    """
    window, delay, as_of = pd.Timedelta(attribution_window), pd.Timedelta(label_delay), utc(as_of)
    if window <= pd.Timedelta(0):
        raise ValueError(f"attribution_window must be positive, got {attribution_window}")
    if delay < window:
        raise ValueError(
            f"label_delay ({label_delay}) must be at least the attribution window ({attribution_window}): "
            "otherwise impressions near the cut are labelled before their window closes, and clicks "
            "still to come are recorded as negatives")

    imps = events_frame(impressions, ("request_id", "position", "experiment_arm", "model_versions", "features"))
    imps = imps[imps["event_time"] <= as_of - delay]
    events = {}
    for name, data in (("click", clicks), ("engaged", engagements)):
        ev = events_frame(data, ("request_id", "value"))
        events[name] = ev[ev["event_time"] <= as_of]  # never a label from after the build time

    out = pd.DataFrame({
        EXAMPLE_ID: imps["event_id"].astype(str),
        "request_id": imps["request_id"].astype(object),
        "user_id": imps["user_id"].astype(str),
        "item_id": imps["item_id"].astype(str),
        "position": imps["position"].astype("Int64"),
        "event_time": imps["event_time"],
        "experiment_arm": imps["experiment_arm"].astype(object),
        "model_versions": [json.dumps(v, sort_keys=True) for v in imps["model_versions"]],
    })
    clicked = _attribute(imps, events["click"], window)
    engaged = _attribute(imps, events["engaged"], window)
    out["click"] = (out[EXAMPLE_ID].map(clicked["n"]).fillna(0) > 0).astype("int8")
    out["engaged"] = (out[EXAMPLE_ID].map(engaged["n"]).fillna(0) > 0).astype("int8")
    out["value"] = out[EXAMPLE_ID].map(engaged["value"]).fillna(0.0).astype("float64")

    logged = pd.DataFrame(list(imps["features"]), index=out.index)  # one column per logged name
    clash = sorted(set(logged.columns) & set(BASE_COLUMNS))
    if clash:
        raise ValueError(f"logged feature names {clash} collide with example columns")
    logged = logged.reindex(columns=sorted(logged.columns)).astype("float64")
    out = pd.concat([out, logged], axis=1)
    return out.sort_values(["event_time", EXAMPLE_ID], kind="stable", ignore_index=True)


def _attribute(imps: pd.DataFrame, events: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """Per impression event_id: ``n`` events attributed to it and the sum of their ``value``
    (1.0 where an event has none)."""
    shown = imps[["event_id", "request_id", "user_id", "item_id", "event_time"]].rename(
        columns={"event_id": "_imp", "event_time": "_shown", "request_id": "_rid", "user_id": "_uid"})
    ev = events[["event_id", "event_time", "request_id", "user_id", "item_id", "value"]].copy()
    ev["value"] = pd.to_numeric(ev["value"], errors="coerce").fillna(1.0).astype("float64")
    has_rid = ev["request_id"].notna()
    by_request = ev[has_rid].merge(shown, left_on=["request_id", "item_id"], right_on=["_rid", "item_id"])
    by_user = ev[~has_rid].merge(shown, left_on=["user_id", "item_id"], right_on=["_uid", "item_id"])
    cand = pd.concat([by_request, by_user], ignore_index=True)
    cand = cand[(cand["event_time"] >= cand["_shown"]) & (cand["event_time"] <= cand["_shown"] + window)]
    # Last touch: each event labels one impression, the latest shown at or before it.
    cand = cand.sort_values(["event_id", "_shown", "_imp"]).drop_duplicates("event_id", keep="last")
    return cand.groupby("_imp").agg(n=("event_id", "size"), value=("value", "sum"))
