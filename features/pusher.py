"""Streaming feature values → Feast: consumes `eightbox.feature-updates` and pushes them online.

The Flink job writes one JSON record per updated feature row (see `parse_update`). Each poll's records
form a small batch; per table it is (1) appended to the Parquet feature table, named after its Kafka
offsets so that a redelivered batch replaces its own file instead of duplicating rows, (2) pushed to
Redis through the table's Feast PushSource, and only then (3) are the offsets committed. A crash
anywhere before (3) redelivers the batch: the same batch rewrites the same file, a differently cut
redelivery may repeat identical rows (harmless to the as-of join, which keeps one row per key and
time), and Feast's Redis writes skip values older than the stored one.

Why not ``push(..., to=PushMode.ONLINE_AND_OFFLINE)``: Feast 0.67's file offline store appends by
reading the batch source as one Parquet file and rewriting it whole, so it cannot write into the
partitioned ``<table>/dt=YYYY-MM-DD/`` folder the Spark backfill writes (it fails on the `dt`
partition column, then would overwrite the folder path). So the offline half is `store.write_offline`,
in the same layout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterable

import pandas as pd

from eightbox.features import specs
from eightbox.settings import Settings

log = logging.getLogger(__name__)



class InvalidUpdate(ValueError):
    pass


def parse_update(raw: bytes | str | dict) -> tuple[str, dict[str, Any]]:
    """One FEATURE_UPDATES record → (table, row). The record format (owned by the Flink job):
    ``{"table": str, "keys": {col: value}, "event_timestamp": ISO-8601 UTC, "values": {feature: value}}``.
    The row holds the table's keys, `event_timestamp` (tz-aware) and its feature values."""
    rec = raw if isinstance(raw, dict) else json.loads(raw)
    try:
        table, keys, values = rec["table"], rec["keys"], rec["values"]
        ts = pd.Timestamp(rec["event_timestamp"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidUpdate(f"malformed feature update: {e!r}") from None
    if table not in specs.TABLE_KEYS:
        raise InvalidUpdate(f"unknown feature table {table!r}")
    row: dict[str, Any] = {}
    for k in specs.TABLE_KEYS[table]:
        if keys.get(k) is None:
            raise InvalidUpdate(f"{table}: key {k!r} missing")
        row[k] = str(keys[k])
    row[specs.TIMESTAMP] = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    for f in specs.table_features(table):
        row[f] = values.get(f)
    return table, row


def push_rows(settings: Settings, store, rows_by_table: dict[str, list[dict]], batch_name: str) -> int:
    """Write one batch offline (Parquet, file `batch_name`) and online (Feast push); returns rows pushed."""
    from feast.data_source import PushMode

    from eightbox.features.repo.definitions import STREAMING_TABLES, push_source_name
    from eightbox.features.store import write_offline

    n = 0
    for table, rows in rows_by_table.items():
        if table not in STREAMING_TABLES:
            log.warning("feature update for %s, which has no push source: %d rows skipped", table, len(rows))
            continue
        keys = list(specs.TABLE_KEYS[table])
        df = pd.DataFrame(rows).drop_duplicates([*keys, specs.TIMESTAMP], keep="last", ignore_index=True)
        write_offline(settings, table, df, batch_name)
        store.push(push_source_name(table), df, to=PushMode.ONLINE)
        n += len(df)
    return n


def run_pusher(settings: Settings, stop: threading.Event | Callable[[], bool], *, store=None,
               poll_ms: int = 500, max_records: int = 500, group_id: str | None = None, consumer=None) -> int:
    """Consume FEATURE_UPDATES until `stop` is set (an Event, or a callable returning True); returns the
    number of rows pushed. `consumer` (tests) replaces the kafka-python consumer."""
    from eightbox.features.store import get_store
    from eightbox.ingest.schema import FEATURE_UPDATES

    should_stop = stop.is_set if isinstance(stop, threading.Event) else stop
    store = store or get_store(settings)
    if consumer is None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(FEATURE_UPDATES.name, bootstrap_servers=settings.kafka_servers,
                                 group_id=group_id or settings.pusher_group, enable_auto_commit=False,
                                 auto_offset_reset="earliest",
                                 max_poll_records=max_records)
    pushed = invalid = 0
    try:
        while not should_stop():
            polled = consumer.poll(timeout_ms=poll_ms, max_records=max_records)
            if not polled:
                continue
            rows_by_table: dict[str, list[dict]] = {}
            for tp, records in polled.items():
                for rec in records:
                    try:
                        table, row = parse_update(rec.value)
                    except (InvalidUpdate, json.JSONDecodeError, UnicodeDecodeError) as e:
                        invalid += 1
                        log.warning("skipping %s[%d]@%d: %s", tp.topic, tp.partition, rec.offset, e)
                        continue
                    rows_by_table.setdefault(table, []).append(row)
            try:
                pushed += push_rows(settings, store, rows_by_table, _batch_name(polled))
            except Exception:  # Redis or disk trouble: rewind, so the batch is redelivered, and retry
                log.exception("feature push failed; retrying the batch")
                for tp, records in polled.items():
                    consumer.seek(tp, records[0].offset)
                time.sleep(1.0)
                continue
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    if invalid:
        log.warning("%d invalid feature updates skipped", invalid)
    return pushed


def _batch_name(polled: dict) -> str:
    """A name fixed by the batch's offsets: `push+<partition>+<first>-<last>+...` (sorted by partition)."""
    parts = [f"{tp.partition}+{recs[0].offset}-{recs[-1].offset}"
             for tp, recs in sorted(polled.items(), key=lambda kv: kv[0].partition)]
    return "push+" + "+".join(parts)


def records_to_rows(records: Iterable[bytes | str | dict]) -> dict[str, list[dict]]:
    """Parse many records into rows by table (invalid ones raise)."""
    out: dict[str, list[dict]] = {}
    for raw in records:
        table, row = parse_update(raw)
        out.setdefault(table, []).append(row)
    return out

