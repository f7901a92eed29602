"""Events → model inputs: the item catalog and the positive interactions the towers learn from.

Both functions take either a list of schema events (``eightbox.ingest.schema``) or a pandas
DataFrame of lake rows (the same field names plus ``event_type``, e.g. the concatenated lake tables);
rows of other event types are ignored. For a leave-last-out split of the interactions use
``eightbox.ingest.movielens.temporal_split``; ``split_at`` below is the global time cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from eightbox.ingest.schema import ItemClicked, ItemEngaged, ItemPublished

ITEM_COLUMNS = ("item_id", "category", "creator_id", "content_vector", "published_at")
INTERACTION_COLUMNS = ("user_id", "item_id", "event_time", "kind", "weight")
CLICK, ENGAGE = "click", "engage"
# An engagement (like, purchase, watch, rating) says more than a click; the weight scales the
# example's loss. Values are per engagement, whatever its `value`: a 1-star rating is still a
# positive here, as in implicit-feedback MovieLens evaluation.
DEFAULT_WEIGHTS = {CLICK: 1.0, ENGAGE: 2.0}


def _rows(events: Sequence | pd.DataFrame, event_type: str, cls: type, fields: tuple[str, ...]) -> pd.DataFrame:
    """The `fields` of every event of one type, in input order (index 0..n-1)."""
    if isinstance(events, pd.DataFrame):
        if "event_type" not in events.columns:
            raise ValueError("a DataFrame of events needs an 'event_type' column")
        frame = events.loc[events["event_type"] == event_type]
        missing = [f for f in fields if f not in frame.columns]
        if missing and len(frame):
            raise ValueError(f"{event_type} rows lack columns {missing}")
        return frame.reindex(columns=list(fields)).reset_index(drop=True)
    picked = [e for e in events if isinstance(e, cls)]
    return pd.DataFrame({f: [getattr(e, f) for e in picked] for f in fields}, columns=list(fields))


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True)


def items_from_events(events: Sequence | pd.DataFrame, dim: int | None = None) -> pd.DataFrame:
    """One row per published item: ``item_id, category, creator_id, content_vector, published_at,
    first_published_at``.

    The latest ``ItemPublished`` of an item wins (``published_at`` is its time; ``first_published_at``
    is the item's first, from which its age counts) (by event_time; at equal times the later one in
    the input). ``content_vector`` is a float32 array of one length for every row: ``dim`` when
    given (longer vectors are cut, shorter ones zero-padded), else the longest vector seen (0 when
    no item has one); an absent vector is all zeros. Rows are sorted by item_id.
    """
    fields = ("item_id", "category", "creator_id", "content_vector", "event_time")
    rows = _rows(events, "item_published", ItemPublished, fields)
    rows["event_time"] = _utc(rows["event_time"])
    rows["_order"] = np.arange(len(rows))
    first = rows.groupby(rows["item_id"].astype(str))["event_time"].min()
    rows = rows.sort_values(["event_time", "_order"]).drop_duplicates("item_id", keep="last")
    vectors = [np.asarray([] if v is None else v, dtype=np.float32).ravel() for v in rows["content_vector"]]
    width = dim if dim is not None else max((len(v) for v in vectors), default=0)
    fixed = np.zeros((len(vectors), width), dtype=np.float32)
    for row, v in enumerate(vectors):
        n = min(width, len(v))
        fixed[row, :n] = v[:n]
    out = pd.DataFrame({
        "item_id": rows["item_id"].astype(str).to_numpy(),
        "category": rows["category"].astype(str).to_numpy(),
        "creator_id": rows["creator_id"].astype(str).to_numpy(),
        "content_vector": list(fixed),
        "published_at": rows["event_time"].to_numpy(),
    })
    out["published_at"] = _utc(out["published_at"])
    out["first_published_at"] = _utc(out["item_id"].map(first))
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)


def interactions_from_events(events: Sequence | pd.DataFrame,
                             weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Positive interactions: ``user_id, item_id, event_time (UTC), kind, weight``.

    One row per ``ItemClicked`` (kind "click") and per ``ItemEngaged`` (kind "engage"); a click
    followed by an engagement gives two rows. Impressions without a click are not negatives here:
    the two-tower draws its negatives from the batch. Sorted by event_time (stable).
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    fields = ("user_id", "item_id", "event_time")
    parts = []
    for event_type, cls, kind in (("item_clicked", ItemClicked, CLICK), ("item_engaged", ItemEngaged, ENGAGE)):
        rows = _rows(events, event_type, cls, fields)
        rows["kind"] = kind
        rows["weight"] = float(weights[kind])
        parts.append(rows)
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)  # empty frames skew dtypes
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["event_time"] = _utc(out["event_time"])
    out["weight"] = out["weight"].astype(float)
    return out.sort_values("event_time", kind="stable").reset_index(drop=True)[list(INTERACTION_COLUMNS)]


def split_at(interactions: pd.DataFrame, cutoff: datetime | pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Global time cut: ``(train, test)`` with train strictly before ``cutoff`` and test at or
    after it, so no test row is earlier than any train row (unlike the per-user leave-last-out)."""
    cut = pd.Timestamp(cutoff)
    if cut.tzinfo is None:
        raise ValueError("split_at needs a timezone-aware cutoff (event times are UTC)")
    before = interactions["event_time"] < cut
    return interactions[before], interactions[~before]
