"""Spark batch backfill: feature tables recomputed from the raw Parquet lake.

Window arithmetic is exactly specs.window_ends (locked by tests/integration/test_backfill.py
against specs.window_counts): an event at `ts` (epoch microseconds) falls in the windows ending at
``first = ts - pmod(ts, slide) + slide`` and the next ``size/slide - 1`` multiples of `slide`.
Events are counted once per event_id; category and creator_id are the item's attributes valid
at the event's time: those of the item's LATEST ItemPublished event at or before the event's
``event_time`` (an as-of join on item_id, the same rule as the Flink job's event-time temporal
join; never from the event's future, so results do not depend on the range a run covers). Two
versions of one item with equal event_time are ordered by event_id (Flink keeps the one it read
last; the event contract does not produce such ties). An event whose item was not yet published,
or whose key is missing, is not counted.

Output: ``<features_dir>/<table>/dt=YYYY-MM-DD/part-*.parquet`` with the entity keys,
``event_timestamp`` (UTC timestamp, the window end) and the table's feature columns; dt is the
date of event_timestamp. Writes use dynamic partition overwrite: a run replaces exactly the
partitions of the event_timestamps it covers (emptied ones are removed) and nothing else.
"""

from __future__ import annotations

import shutil
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from eightbox.features.derived import add_derived
from eightbox.features.spark_session import spark_session
from eightbox.features.specs import (DAILY, DERIVED, EPOCH, STREAMING, TIMESTAMP, WindowedCount, by_table,
                                    table_features)
from eightbox.features.validate import ITEM_ATTRIBUTES, ITEM_SOURCE, validate_inputs
from eightbox.settings import Settings

US = timedelta(microseconds=1)
EVENT_COLUMNS = ("event_type", "event_id", "event_time", "user_id", "item_id")


def _us(t: datetime) -> int:
    return (t - EPOCH) // US


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


# --- reading the lake --------------------------------------------------------------------------
def lake_files(lake_dir: Path, event_type: str, start: datetime | None, end: datetime) -> list[Path]:
    """Files of one event type in the day folders that can hold event times in [start, end)."""
    first = start.date() if start else date.min
    last = (end - US).date()
    out = []
    for folder in sorted((lake_dir / "raw" / event_type).glob("dt=*")):
        if first <= date.fromisoformat(folder.name[3:]) <= last:
            out.extend(sorted(folder.glob("hr=*/*.parquet")))
    return out


def _read(spark: SparkSession, files: list[Path], columns: list[str]) -> DataFrame:
    return spark.read.parquet(*(str(f) for f in files)).select(*columns)


def _publications(spark: SparkSession, files: list[Path], end: datetime) -> DataFrame:
    """ItemPublished events before `end`, once per event_id."""
    return (_read(spark, files, ["event_id", "event_time", "item_id", "category", "creator_id"])
            .where((F.col("event_time") < F.lit(end)) & F.col("item_id").isNotNull())
            .dropDuplicates(["event_id"]))


def item_dimension(spark: SparkSession, files: list[Path], end: datetime) -> DataFrame:
    """(item_id, category, creator_id, published_at): one row per item, from its first
    ItemPublished event before `end` (published_at = when the item first appeared; the derived
    columns item_age_days and creator_items read this). Events are enriched with item_versions."""
    if not files:
        return spark.createDataFrame([], "item_id string, category string, creator_id string, published_at timestamp")
    order = F.struct("event_time", "event_id")
    return _publications(spark, files, end).groupBy("item_id").agg(
        F.min("event_time").alias("published_at"),
        F.min_by("category", order).alias("category"),
        F.min_by("creator_id", order).alias("creator_id"))


def item_versions(spark: SparkSession, files: list[Path], end: datetime) -> DataFrame:
    """(item_id, valid_from, version_id, category, creator_id): every ItemPublished event before
    `end`, one row per event_id; a version is valid from its event_time until the item's next one."""
    if not files:
        return spark.createDataFrame([], "item_id string, valid_from timestamp, version_id string, "
                                         "category string, creator_id string")
    return _publications(spark, files, end).select(
        "item_id", F.col("event_time").alias("valid_from"), F.col("event_id").alias("version_id"),
        *ITEM_ATTRIBUTES)


def enrich(events: DataFrame, versions: DataFrame) -> DataFrame:
    """`events` (EVENT_COLUMNS, one row per (event_type, event_id)) plus ITEM_ATTRIBUTES as of each
    event's time: from the item's latest version with valid_from <= event_time (ties: the larger
    version_id), null when the item had no version yet."""
    v = versions.select(F.col("item_id").alias("_item"), "valid_from", "version_id", *ITEM_ATTRIBUTES)
    joined = events.join(F.broadcast(v), (F.col("item_id") == F.col("_item"))
                         & (F.col("valid_from") <= F.col("event_time")), "left")
    latest = Window.partitionBy("event_type", "event_id").orderBy(
        F.col("valid_from").desc_nulls_last(), F.col("version_id").desc_nulls_last())
    return (joined.withColumn("_rn", F.row_number().over(latest)).where(F.col("_rn") == 1)
            .select(*EVENT_COLUMNS, *ITEM_ATTRIBUTES))


def load_events(spark: SparkSession, files: dict[str, list[Path]], start: datetime | None, end: datetime,
                items: DataFrame | None = None) -> DataFrame:
    """Events of the given types with event_time in [start, end), one row per (event_type,
    event_id), columns EVENT_COLUMNS plus ITEM_ATTRIBUTES when `items` (item_versions) is given:
    the attributes of the item's latest version at or before the event (see `enrich`)."""
    frames = []
    for event_type, paths in sorted(files.items()):
        if event_type == ITEM_SOURCE or not paths:
            continue
        df = _read(spark, paths, list(EVENT_COLUMNS[1:])).withColumn("event_type", F.lit(event_type))
        frames.append(df.select(*EVENT_COLUMNS))
    if not frames:  # nothing in range: an empty frame of the same shape
        frames.append(spark.createDataFrame([], ", ".join(f"{c} {'timestamp' if c == 'event_time' else 'string'}"
                                                          for c in EVENT_COLUMNS)))
    events = frames[0]
    for df in frames[1:]:
        events = events.unionByName(df)
    window = F.col("event_time") < F.lit(end)
    if start is not None:
        window &= F.col("event_time") >= F.lit(start)
    events = events.where(window).dropDuplicates(["event_type", "event_id"])
    if items is not None:
        events = enrich(events, items)
    return events


# --- windows -------------------------------------------------------------------------------------
def _ceil_to(us: int, step: int) -> int:
    return -(-us // step) * step


def table_window_counts(events: DataFrame, specs: list[WindowedCount], ends_from: datetime | None = None,
                        ends_before: datetime | None = None) -> DataFrame:
    """Counts of several specs sharing keys and slide, one row per (keys, window end) where any
    is non-zero, columns (*keys, event_timestamp, *spec names). Only window ends in
    [ends_from, ends_before) are produced when those bounds are given."""
    keys, slide = specs[0].keys, specs[0].slide
    if any(s.keys != keys or s.slide != slide for s in specs):
        raise ValueError("table_window_counts: specs must share keys and slide")
    slide_us = slide // US
    types = sorted({t for s in specs for t in s.events})
    n_windows = F.lit(0)
    for t in types:  # each event type explodes into the windows of its longest spec only
        n_windows = F.when(F.col("event_type") == t, F.lit(max(s.size // slide for s in specs if t in s.events))
                           ).otherwise(n_windows)
    ts = F.unix_micros("event_time")
    first = ts - F.pmod(ts, F.lit(slide_us)) + F.lit(slide_us)
    lo, hi = first, first + (n_windows - 1) * F.lit(slide_us)
    if ends_from is not None:
        lo = F.greatest(lo, F.lit(_ceil_to(_us(ends_from), slide_us)))
    if ends_before is not None:
        hi = F.least(hi, F.lit((_us(ends_before) - 1) // slide_us * slide_us))
    present = F.col("event_type").isin(types)
    for k in keys:
        present &= F.col(k).isNotNull()
    exploded = (events.where(present).select(*keys, "event_type", ts.alias("_ts"), lo.alias("_lo"), hi.alias("_hi"))
                .where(F.col("_lo") <= F.col("_hi"))
                .select(*keys, "event_type", "_ts",
                        F.explode(F.sequence("_lo", "_hi", F.lit(slide_us))).alias("_end")))
    counts = [_count(s) for s in specs]
    return (exploded.groupBy(*keys, "_end").agg(*counts)
            .select(*keys, F.timestamp_micros("_end").alias(TIMESTAMP), *(s.name for s in specs)))


def _count(spec: WindowedCount) -> Column:
    hit = F.col("event_type").isin(list(spec.events)) & (F.col("_ts") >= F.col("_end") - F.lit(spec.size // US))
    return F.sum(F.when(hit, 1).otherwise(0)).cast("long").alias(spec.name)


def spark_window_counts(events: DataFrame, spec: WindowedCount, ends_from: datetime | None = None,
                        ends_before: datetime | None = None) -> DataFrame:
    """One spec over `events` (EVENT_COLUMNS + the spec's keys): rows (*keys, event_timestamp,
    spec.name) for every window end holding at least one event; equals specs.window_counts."""
    return table_window_counts(events, [spec], ends_from, ends_before)


# --- writing ---------------------------------------------------------------------------------
def _parts(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.parquet")} if folder.is_dir() else set()


def _tidy(table_dir: Path) -> None:
    """Remove what Spark's local committer leaves beside the data: checksums, markers, staging."""
    for p in [*table_dir.glob("*/.*.crc"), *table_dir.glob(".*.crc"), *table_dir.glob("_SUCCESS")]:
        p.unlink(missing_ok=True)
    for p in [*table_dir.glob(".spark-staging-*"), *table_dir.glob("_temporary")]:
        shutil.rmtree(p, ignore_errors=True)


def write_partitions(df: DataFrame, table_dir: Path, keys: tuple[str, ...], days: list[date]) -> int:
    """Write `df` (rows whose event_timestamp falls on `days`) as dt partitions of `table_dir`,
    one file per day, replacing exactly those days' partitions: a day that gets no row loses its
    old partition. Returns the rows now in those partitions."""
    folders = [table_dir / f"dt={d.isoformat()}" for d in days]
    before = {f: _parts(f) for f in folders}
    (df.withColumn("dt", F.date_format(TIMESTAMP, "yyyy-MM-dd"))
       .repartition("dt").sortWithinPartitions(*keys, TIMESTAMP)
       .write.mode("overwrite").partitionBy("dt").parquet(str(table_dir)))
    _tidy(table_dir)
    rows = 0
    for folder in folders:
        now = _parts(folder)
        if now and now == before[folder]:  # Spark wrote no row for this day: the old data is stale
            shutil.rmtree(folder)
            continue
        rows += sum(pq.read_metadata(folder / name).num_rows for name in now)
    return rows


# --- backfills -----------------------------------------------------------------------------------
def _compute(settings: Settings, spark: SparkSession | None, specs: tuple[WindowedCount, ...],
             ends_from: datetime, ends_before: datetime, derived: bool) -> dict[str, int]:
    """Validate, compute and write the tables of `specs` for window ends in [ends_from, ends_before)."""
    tables = by_table(specs)
    history = ends_from - max(s.size for s in specs)
    types = {t for s in specs for t in s.events} | {ITEM_SOURCE}
    files = {t: lake_files(settings.lake_dir, t, history, ends_before) for t in types}
    files[ITEM_SOURCE] = lake_files(settings.lake_dir, ITEM_SOURCE, None, ends_before)
    extra = [d for t in tables for d in DERIVED.get(t, ())] if derived else []
    validate_inputs(files, specs, extra)
    spark = spark or spark_session(settings)
    items = item_dimension(spark, files[ITEM_SOURCE], ends_before).cache()
    versions = item_versions(spark, files[ITEM_SOURCE], ends_before)
    events = load_events(spark, files, history, ends_before, versions).cache()
    try:
        out = {t: table_window_counts(events, ss, ends_from, ends_before) for t, ss in tables.items()}
        if derived:
            out = add_derived(out, items)
        out = {t: df.select(*TABLE_ORDER[t], TIMESTAMP, *_features(t, derived)) for t, df in out.items()}
        days = _partition_days(ends_from, ends_before)
        return {t: write_partitions(df, settings.features_dir / t, TABLE_ORDER[t], days)
                for t, df in out.items()}
    finally:
        events.unpersist()
        items.unpersist()


def _partition_days(ends_from: datetime, ends_before: datetime) -> list[date]:
    first, last = ends_from.date(), (ends_before - US).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


TABLE_ORDER = {t: ss[0].keys for t, ss in by_table((*DAILY, *STREAMING)).items()}


def _features(table: str, derived: bool) -> list[str]:
    return [f for f in table_features(table) if derived or f not in DERIVED.get(table, ())]


def backfill(settings: Settings, day: date, spark: SparkSession | None = None) -> dict[str, int]:
    """The daily tables' rows known at the end of `day` (event_timestamp = day+1 00:00 UTC, from
    events strictly before it), with their derived columns; replaces partition dt=day+1 of each
    table. Returns {table: rows written}."""
    return backfill_days(settings, day, day, spark)


def backfill_days(settings: Settings, first_day: date, last_day: date,
                  spark: SparkSession | None = None) -> dict[str, int]:
    """backfill() for every day in [first_day, last_day] in one Spark job (partitions
    dt=first_day+1 .. last_day+1)."""
    ends_from = midnight(first_day + timedelta(days=1))
    return _compute(settings, spark, DAILY, ends_from, midnight(last_day + timedelta(days=2)), True)


def streaming_backfill(settings: Settings, start: datetime | date, end: datetime | date,
                       spark: SparkSession | None = None) -> dict[str, int]:
    """The STREAMING tables' rows with event_timestamp in [start, end), from the lake; `start`
    and `end` must be UTC midnights (whole dt partitions are replaced). Returns {table: rows}."""
    start, end = (midnight(t) if not isinstance(t, datetime) else t for t in (start, end))
    for t in (start, end):
        if t.utcoffset() is None or t.astimezone(timezone.utc).time() != time():
            raise ValueError(f"streaming_backfill: {t} is not a UTC midnight")
    return _compute(settings, spark, STREAMING, start, end, False)
