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
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from eightbox.features import specs
from eightbox.settings import Settings

log = logging.getLogger(__name__)


class InvalidUpdate(ValueError):
    pass


_META = ("table", "event_timestamp")


def parse_update(raw: bytes | str | dict) -> tuple[str, dict[str, Any]]:
    """One FEATURE_UPDATES record → (table, row); raises InvalidUpdate with a one-line reason.

    The record format is owned by the Flink job (features/stream/sql.py's docstring): a flat JSON
    object ``{"table": str, "event_timestamp": ISO-8601 UTC, <key>: str, ..., <feature>: value, ...}``
    whose keys are exactly ``TABLE_KEYS[table]`` and whose features are the table's (a feature the
    job left null is absent). The nested form ``{"table", "keys": {...}, "event_timestamp",
    "values": {...}}`` is accepted too (tests and hand-written records use it).
    The row holds the table's keys, `event_timestamp` (tz-aware UTC) and its feature values."""
    try:
        rec = raw if isinstance(raw, dict) else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidUpdate(f"not JSON: {e}") from None
    if not isinstance(rec, dict):
        raise InvalidUpdate(f"not a JSON object: {type(rec).__name__}")
    table = rec.get("table")
    if not isinstance(table, str):
        raise InvalidUpdate("field 'table' missing or not a string")
    if table not in specs.TABLE_KEYS:
        raise InvalidUpdate(f"unknown feature table {table!r}")
    features = specs.table_features(table)
    if "keys" in rec or "values" in rec:
        keys, values = rec.get("keys"), rec.get("values")
        if not isinstance(keys, dict) or not isinstance(values, dict):
            raise InvalidUpdate(f"{table}: 'keys' and 'values' must both be objects")
    else:
        keys, values = rec, rec
        unknown = sorted(set(rec) - set(_META) - set(specs.TABLE_KEYS[table]) - set(features))
        if unknown:
            raise InvalidUpdate(f"{table}: unexpected fields {unknown}")
    try:
        ts = pd.Timestamp(rec["event_timestamp"])
        if pd.isna(ts):
            raise ValueError("NaT")
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidUpdate(f"{table}: bad or missing event_timestamp ({e!r})") from None
    row: dict[str, Any] = {}
    for k in specs.TABLE_KEYS[table]:
        if keys.get(k) is None or keys.get(k) == "":
            raise InvalidUpdate(f"{table}: key {k!r} missing")
        row[k] = str(keys[k])
    row[specs.TIMESTAMP] = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    present = 0
    for f in features:
        value = values.get(f)
        if value is not None:
            present += 1
            if f == "last_engaged_items":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise InvalidUpdate(f"{table}: {f} must be a list of strings")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise InvalidUpdate(f"{table}: {f} must be a number, got {value!r}")
        row[f] = value
    if not present:
        raise InvalidUpdate(f"{table}: no feature value")
    return table, row


def push_rows(settings: Settings, store, rows_by_table: dict[str, list[dict]], batch_name: str,
              redis_client=None) -> int:
    """Write one batch offline (Parquet, file `batch_name`) and online (Feast push), then move the
    stream's clock (`stream_time`) to the batch's newest rows; returns rows pushed."""
    import redis
    from feast.data_source import PushMode

    from eightbox.features import stream_time
    from eightbox.features.repo.definitions import STREAMING_TABLES, push_source_name
    from eightbox.features.store import write_offline

    n = 0
    newest: dict = {}
    for table, rows in rows_by_table.items():
        if table not in STREAMING_TABLES:
            log.warning("feature update for %s, which has no push source: %d rows skipped", table, len(rows))
            continue
        keys = list(specs.TABLE_KEYS[table])
        df = pd.DataFrame(rows).drop_duplicates([*keys, specs.TIMESTAMP], keep="last", ignore_index=True)
        write_offline(settings, table, df, batch_name)
        # Online, only each entity's newest row of the batch: Feast's Redis write keeps the newest
        # value per entity anyway, and a catching-up batch holds many windows of the same entity.
        latest = (df.sort_values(specs.TIMESTAMP, kind="stable")
                  .drop_duplicates(keys, keep="last", ignore_index=True))
        store.push(push_source_name(table), latest, to=PushMode.ONLINE)
        newest[table] = pd.Timestamp(df[specs.TIMESTAMP].max()).to_pydatetime()
        n += len(df)
    if newest:  # after the values: a reader never sees a clock ahead of the counts it judges
        stream_time.advance(redis_client or redis.Redis.from_url(settings.redis_address),
                            store.config.project, newest)
    return n


def run_pusher(settings: Settings, stop: threading.Event | Callable[[], bool], *, store=None,
               poll_ms: int = 500, max_records: int = 5000, group_id: str | None = None, consumer=None,
               dead_letters=None, heartbeat: Path | None = None) -> int:
    """Consume FEATURE_UPDATES until `stop` is set (an Event, or a callable returning True); returns the
    number of rows pushed.

    Reads with ``isolation_level=read_committed``: the Flink job writes the topic in Kafka transactions
    (exactly-once sink), so records of aborted or still-open transactions are never pushed.
    A record that does not parse goes to the dead-letter topic with its reason (`dead_letters`: an
    `EventProducer`; by default one is created, except with an injected `consumer`, where the record
    is only logged); dead letters are flushed before the batch's offsets are committed.
    `heartbeat` (a file path): rewritten at least every second with the time, pid and the number of
    partitions assigned, so a supervisor can tell a live consumer-group member from a hung process.
    `consumer` (tests) replaces the kafka-python consumer."""
    import redis

    from eightbox.features.store import get_store
    from eightbox.ingest.schema import FEATURE_UPDATES

    should_stop = stop.is_set if isinstance(stop, threading.Event) else stop
    store = store or get_store(settings)
    clock = redis.Redis.from_url(settings.redis_address)  # the stream's clock (features/stream_time.py)
    own_consumer = consumer is None
    if consumer is None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(FEATURE_UPDATES.name, bootstrap_servers=settings.kafka_servers,
                                 group_id=group_id or settings.pusher_group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", isolation_level="read_committed",
                                 max_poll_records=max_records, client_id="eightbox-feature-pusher")
    own_producer = dead_letters is None and own_consumer
    if own_producer:
        from eightbox.ingest.producer import EventProducer

        dead_letters = EventProducer(settings, source="feature-pusher")
    pushed = invalid = 0
    beat = _Heartbeat(heartbeat, consumer)
    try:
        while not should_stop():
            polled = consumer.poll(timeout_ms=poll_ms, max_records=max_records)
            beat.touch(pushed)
            if not polled:
                continue
            rows_by_table: dict[str, list[dict]] = {}
            bad = 0
            for tp, records in polled.items():
                for rec in records:
                    try:
                        table, row = parse_update(rec.value)
                    except InvalidUpdate as e:
                        bad += 1
                        reason = f"feature update {tp.topic}[{tp.partition}]@{rec.offset}: {e}"
                        log.warning("dead-lettering %s", reason)
                        if dead_letters is not None:
                            dead_letters.dead_letter(rec.value if rec.value is not None else b"", reason)
                        continue
                    rows_by_table.setdefault(table, []).append(row)
            try:
                n = push_rows(settings, store, rows_by_table, _batch_name(polled), clock)
                if bad and dead_letters is not None:
                    dead_letters.flush()
            except Exception:  # Redis, Kafka or disk trouble: rewind, so the batch is redelivered, and retry
                log.exception("feature push failed; retrying the batch")
                for tp, records in polled.items():
                    consumer.seek(tp, records[0].offset)
                time.sleep(1.0)
                continue
            pushed += n
            invalid += bad
            beat.latest = max([beat.latest, *(r[specs.TIMESTAMP] for rows in rows_by_table.values() for r in rows)],
                              key=lambda t: (t is not None, t))
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
        if own_producer:
            dead_letters.close()
        beat.clear()
    if invalid:
        log.warning("%d invalid feature updates dead-lettered", invalid)
    return pushed


class _Heartbeat:
    """`<path>`: JSON {time, pid, assigned, pushed, latest}, replaced atomically at most once a second."""

    def __init__(self, path: Path | None, consumer):
        self.path, self.consumer, self.last = path, consumer, 0.0
        self.latest = None  # newest event_timestamp pushed so far

    def touch(self, pushed: int) -> None:
        if self.path is None or time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        assignment = getattr(self.consumer, "assignment", None)
        assigned = len(assignment()) if callable(assignment) else 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        latest = self.latest.isoformat().replace("+00:00", "Z") if self.latest is not None else None
        tmp.write_text(json.dumps({"time": time.time(), "pid": os.getpid(), "assigned": assigned,
                                   "pushed": pushed, "latest": latest}))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


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

