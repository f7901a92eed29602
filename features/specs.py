"""Every windowed feature, specified once; the Flink job and the Spark backfill both read these.

Window semantics (the one definition both engines must reproduce, locked by a parity test):
a hopping window of length `size` that advances by `slide` covers event times
``[end - size, end)``; it exists for every ``end`` that is a multiple of `slide` (counted from the
Unix epoch) and holds at least one event; its value is stamped ``event_timestamp = end`` — the
first instant at which the value is known. A training example labelled at time t sees, per
entity, the latest row with ``event_timestamp < t`` and nothing newer.

A window without events is never emitted, so a streaming count's row is the entity's count only
for a while (`current_for`): afterwards the count is 0, online and offline alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class WindowedCount:
    """`name` = count of `events` per `keys` over a hopping window of `size`, advancing by `slide`."""

    name: str
    keys: tuple[str, ...]
    events: tuple[str, ...]
    size: timedelta
    slide: timedelta
    table: str  # the feature table (and Feast feature view) it lands in

    def __post_init__(self) -> None:
        if self.size % self.slide:
            raise ValueError(f"{self.name}: size must be a whole number of slides")


MINUTE, DAY = timedelta(minutes=1), timedelta(days=1)

# Streaming (session-level) features: Flink computes them live, Spark recomputes them from the lake.
STREAMING = (
    WindowedCount("uc_clicks_30m", ("user_id", "category"), ("item_clicked",), 30 * MINUTE, MINUTE,
                  "user_category_session"),
    WindowedCount("item_clicks_15m", ("item_id",), ("item_clicked",), 15 * MINUTE, MINUTE, "item_session"),
    WindowedCount("item_impressions_15m", ("item_id",), ("impression_served",), 15 * MINUTE, MINUTE,
                  "item_session"),
)

def current_for(table: str) -> timedelta | None:
    """How long a row of a `STREAMING` table, stamped at its window's end, stays the entity's count
    (None for other tables: daily rows hold until the next day's, and the last engaged items never
    lapse). Two slides: had the next window held an event, its row would have replaced this one a
    slide later; the second slide is grace for the stream's lag (watermark, commit, push: seconds).
    After that the count is 0, not the last non-empty window's: "clicks in the last 15 minutes" of an
    item last clicked yesterday is 0."""
    slides = {spec.slide for spec in STREAMING if spec.table == table}
    return 2 * slides.pop() if slides else None


# Daily features: the Spark backfill computes one row per entity per day that had events in range.
DAILY = tuple(
    WindowedCount(f"{prefix}_{days}d", keys, events, days * DAY, DAY, table)
    for prefix, keys, events, table, windows in (
        ("user_engagements", ("user_id",), ("item_engaged",), "user_daily", (1, 7, 30)),
        ("user_clicks", ("user_id",), ("item_clicked",), "user_daily", (1, 7, 30)),
        ("uc_engagements", ("user_id", "category"), ("item_engaged",), "user_category_daily", (1, 7, 30)),
        ("item_impressions", ("item_id",), ("impression_served",), "item_daily", (1, 7)),
        ("item_clicks", ("item_id",), ("item_clicked",), "item_daily", (1, 7)),
        ("item_engagements", ("item_id",), ("item_engaged",), "item_daily", (1, 7)),
        ("creator_clicks", ("creator_id",), ("item_clicked",), "creator_daily", (7,)),
        ("creator_impressions", ("creator_id",), ("impression_served",), "creator_daily", (7,)),
    )
    for days in windows
)

LAST_N_ENGAGED = 10  # the user's last N engaged items (streaming, list-valued)
CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS = 1.0, 20.0  # smoothed CTR = (c + a) / (i + b): ~5% for unseen


# Columns computed from the counts above (Spark: features/derived.py), by table.
DERIVED: dict[str, tuple[str, ...]] = {
    "user_category_daily": ("uc_affinity_30d",),  # share of the user's 30-day engagements, smoothed
    "item_daily": ("item_ctr_1d", "item_ctr_7d", "item_popularity_7d", "item_trending", "item_age_days"),
    "creator_daily": ("creator_ctr_7d", "creator_items"),
}

# Entity keys of every feature table; each table is a Feast feature view of the same name.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "user_daily": ("user_id",),
    "user_category_daily": ("user_id", "category"),
    "item_daily": ("item_id",),
    "creator_daily": ("creator_id",),
    "user_category_session": ("user_id", "category"),
    "item_session": ("item_id",),
    "user_recent": ("user_id",),  # last_engaged_items: list of item ids, newest first
}
TIMESTAMP = "event_timestamp"  # feature-table time column: when the value became known


def table_features(table: str) -> list[str]:
    """Feature columns of one table, in a stable order."""
    counts = [s.name for s in (*DAILY, *STREAMING) if s.table == table]
    extra = ["last_engaged_items"] if table == "user_recent" else []
    return counts + list(DERIVED.get(table, ())) + extra


def smoothed_ctr(clicks: float, impressions: float) -> float:
    """Click-through rate shrunk toward the prior, so 1 click in 1 impression is not a 100% CTR."""
    return (clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)


TRENDING_PRIOR_CLICKS = 1.0


def trending(clicks_1d: float, clicks_7d: float) -> float:
    """Yesterday's clicks against the 7-day daily average, both shrunk by one click; > 1 means rising."""
    return (clicks_1d + TRENDING_PRIOR_CLICKS) / (clicks_7d / 7.0 + TRENDING_PRIOR_CLICKS)


def window_ends(ts: datetime, size: timedelta, slide: timedelta) -> list[datetime]:
    """Ends of every hopping window that contains `ts` (end - size <= ts < end), oldest first."""
    slide_us = slide // timedelta(microseconds=1)
    offset = (ts - EPOCH) // timedelta(microseconds=1)
    first_end = (offset // slide_us + 1) * slide_us  # the first window end strictly after ts
    n = size // slide
    return [EPOCH + timedelta(microseconds=first_end + k * slide_us) for k in range(n)]


def window_counts(spec: WindowedCount, rows: Iterable[Mapping]) -> dict[tuple, int]:
    """The reference materialization: {(*key values, window_end): count} over rows that carry
    `event_type`, `event_time` and the spec's keys. Rows missing a key value are not counted."""
    out: Counter = Counter()
    for row in rows:
        if row["event_type"] not in spec.events:
            continue
        key = tuple(row.get(k) for k in spec.keys)
        if any(v is None for v in key):
            continue
        for end in window_ends(row["event_time"], spec.size, spec.slide):
            out[(*key, end)] += 1
    return dict(out)


def by_table(specs: Iterable[WindowedCount]) -> dict[str, list[WindowedCount]]:
    tables: dict[str, list[WindowedCount]] = {}
    for spec in specs:
        tables.setdefault(spec.table, []).append(spec)
    return tables
