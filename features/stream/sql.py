"""The streaming feature job as Flink SQL, generated from `features.specs` (never written twice).

Pipeline (all per-event work stays in the JVM; Python only builds and submits these statements):

1. **Sources**: one Kafka table per event topic (``ingest.schema.TOPICS``), JSON, with
   ``event_time`` parsed as ``TIMESTAMP_LTZ(3)`` (ISO-8601, 'Z') and an event-time watermark of
   bounded out-of-orderness (``out_of_orderness_s``, default 2 s). An event partition that stays
   silent for ``idle_timeout_s`` (default 5 min) is marked idle so that a dead partition cannot stall
   the features; the sparse items topic uses ``items_idle_timeout_s`` (10 s). The event timeout is long
   on purpose: when an idle partition wakes up, its records already behind the watermark that the
   busy partitions moved are late, so a short timeout turns every burst after a pause into late
   events (seen in the restart test before the split: 10 of 300 events late).
2. **Late events**: a row with ``event_time < CURRENT_WATERMARK(event_time)`` (later than the
   allowed lateness) is written to ``LATE_EVENTS`` with its Kafka position; every other row goes on.
   The window operators downstream can never drop an event this filter let through (a window
   ending after ``event_time`` ends after the watermark), so nothing is silently dropped.
3. **Dedupe by event_id**: window deduplication (``ROW_NUMBER() ... = 1`` over a ``dedup_window_s``
   TUMBLE, keep the first row). Duplicates of an event carry the same ``event_time`` and so fall
   in the same tumble; the state is freed by the watermark (no TTL), and the output is append-only
   and keeps ``event_time`` as its time attribute.
4. **Enrichment**: a spec keyed by an item attribute (``category``, ``creator_id``) reads its events
   through an *event-time temporal join* against a versioned view of ``eightbox.items`` (latest
   ``ItemPublished`` per ``item_id`` by ``event_time``): a click gets the category its item had at
   the click's event time, deterministic under replay. Events on items never published have no
   such key and are not counted (as in ``specs.window_counts``, rows missing a key are skipped).
5. **Windows**: per feature table of ``specs.STREAMING`` one ``HOP`` window-TVF aggregation over
   the union of its specs' event streams, one ``COUNT(*) FILTER (WHERE event_type IN (...))`` per
   spec; windows are ``[end - size, end)`` with ends on multiples of ``slide`` from the epoch (the
   session time zone is UTC), emitted when the watermark passes ``end``, stamped ``end``.
6. **Last engaged**: ``user_recent.last_engaged_items`` = the user's last ``LAST_N_ENGAGED``
   (deduplicated) engaged item ids, newest first, from an event-time ``OVER`` window (ROWS), one
   record per engagement, stamped with that engagement's ``event_time``.

FEATURE_UPDATES record format (topic ``eightbox.feature-updates``, written exactly-once with Kafka
transactions: read it with ``isolation_level=read_committed``): key = UTF-8
``"<table>|<key1>|<key2>..."`` (so one entity's updates stay in one partition, in order); value =
one JSON object per (table, entity keys, event_timestamp)::

    {"table": "item_session", "event_timestamp": "2026-11-20T10:15:00Z",
     "item_id": "i1", "item_clicks_15m": 3, "item_impressions_15m": 0}
    {"table": "user_category_session", "event_timestamp": "2026-11-20T10:15:00Z",
     "user_id": "u1", "category": "books", "uc_clicks_30m": 2}
    {"table": "user_recent", "event_timestamp": "2026-11-20T10:14:03.250Z",
     "user_id": "u1", "last_engaged_items": ["i9", "i4", "i1"]}

- ``table``: a key of ``specs.TABLE_KEYS``; the entity keys are exactly ``TABLE_KEYS[table]``
  (strings); the features are exactly those of ``specs.table_features(table)`` that are streamed
  (``STREAMING`` counts as integers, ``last_engaged_items`` as a JSON array); no other field.
- ``event_timestamp``: ISO-8601 UTC with a ``Z`` (milliseconds shown when non-zero): the window
  end for counts (value known from then on), the engagement's event time for ``user_recent``.
- A window that holds no event of the table is not emitted (its counts are 0); inside a record a
  count of 0 means that spec had no event in that window while a sibling spec did.
- ``user_recent``: two engagements of one user with the same ``event_time`` give two records
  with the same timestamp; the later one (in topic order) holds both.

LATE_EVENTS record format (``eightbox.late-events``, key = event_id)::

    {"event_id": "...", "event_type": "item_clicked", "event_time": "...Z", "user_id": "u1",
     "item_id": "i1", "topic": "eightbox.clicks", "partition": 2, "offset": 1234,
     "watermark": "...Z"}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from eightbox.features import specs
from eightbox.ingest.schema import FEATURE_UPDATES, LATE_EVENTS, TOPICS

ITEMS_EVENT = "item_published"
ENGAGED_EVENT = "item_engaged"
EVENT_COLUMNS = ("user_id", "item_id")  # key columns every user/item event carries
ITEM_COLUMNS = ("category", "creator_id")  # key columns that come from the item (temporal join)
JOB_NAME = "eightbox-features-stream"


@dataclass(frozen=True)
class JobOptions:
    kafka_servers: str
    out_of_orderness_s: float = 2.0
    idle_timeout_s: float = 300.0  # event topics: only a dead partition should be skipped
    items_idle_timeout_s: float = 10.0  # item publications are sparse; the temporal join must not wait
    dedup_window_s: int = 10
    checkpoint_interval_s: float = 5.0
    group_id: str = "eightbox-flink-features"
    startup_mode: str = "earliest-offset"  # ignored when restoring from a checkpoint
    startup_timestamp_ms: int | None = None  # with startup_mode="timestamp": read records from then on
    exactly_once: bool = True
    transactional_id_prefix: str = "eightbox-features"
    transaction_timeout_ms: int = 600_000  # under the broker's transaction.max.timeout.ms (15 min)


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _interval(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds != delta.total_seconds():
        raise ValueError(f"window lengths must be whole seconds, got {delta}")
    if seconds % 60 == 0:
        n, unit = seconds // 60, "MINUTE"
    else:
        n, unit = seconds, "SECOND"
    return f"INTERVAL '{n}' {unit}({max(2, len(str(n)))})"


def _seconds(seconds: float) -> str:
    return f"INTERVAL '{seconds:g}' SECOND"


def _kafka_source(opts: JobOptions, topic: str, idle_timeout_s: float) -> str:
    return (f"'connector' = 'kafka', 'topic' = '{topic}', "
            f"'properties.bootstrap.servers' = '{opts.kafka_servers}', "
            f"'properties.group.id' = '{opts.group_id}', "
            f"'scan.startup.mode' = '{opts.startup_mode}', "
            + (f"'scan.startup.timestamp-millis' = '{opts.startup_timestamp_ms}', "
               if opts.startup_mode == "timestamp" else "") +
            "'properties.auto.offset.reset' = 'earliest', "
            "'format' = 'json', 'json.ignore-parse-errors' = 'true', "
            "'json.timestamp-format.standard' = 'ISO-8601', "
            f"'scan.watermark.idle-timeout' = '{int(idle_timeout_s * 1000)} ms'")


def _kafka_sink(opts: JobOptions, topic: str, key_field: str, suffix: str) -> str:
    if opts.exactly_once:
        guarantee = (f"'sink.delivery-guarantee' = 'exactly-once', "
                     f"'sink.transactional-id-prefix' = '{opts.transactional_id_prefix}-{suffix}', "
                     f"'properties.transaction.timeout.ms' = '{opts.transaction_timeout_ms}', ")
    else:
        guarantee = "'sink.delivery-guarantee' = 'at-least-once', "
    return (f"'connector' = 'kafka', 'topic' = '{topic}', "
            f"'properties.bootstrap.servers' = '{opts.kafka_servers}', {guarantee}"
            f"'key.format' = 'raw', 'key.fields' = '{key_field}', 'value.fields-include' = 'EXCEPT_KEY', "
            "'value.format' = 'json', 'value.json.encode.ignore-null-fields' = 'true', "
            "'value.json.timestamp-format.standard' = 'ISO-8601'")


def streamed_event_types() -> list[str]:
    """Event types the job reads windows/lists from (items are read separately, for enrichment)."""
    types = {e for spec in specs.STREAMING for e in spec.events} | {ENGAGED_EVENT}
    return sorted(types)


def _tables() -> dict[str, list[specs.WindowedCount]]:
    tables = specs.by_table(specs.STREAMING)
    for table, group in tables.items():
        if {(s.size, s.slide) for s in group} != {(group[0].size, group[0].slide)}:
            raise NotImplementedError(f"{table}: specs of one table must share size and slide")
        if any(s.keys != specs.TABLE_KEYS[table] for s in group):
            raise ValueError(f"{table}: spec keys differ from TABLE_KEYS")
        unknown = set(group[0].keys) - set(EVENT_COLUMNS) - set(ITEM_COLUMNS)
        if unknown:
            raise NotImplementedError(f"{table}: no source column for keys {sorted(unknown)}")
    return tables


def output_columns() -> tuple[list[str], list[tuple[str, str]]]:
    """(entity key columns, [(feature column, SQL type)]) of the FEATURE_UPDATES value."""
    tables = _tables()
    keys = sorted({k for t in (*tables, "user_recent") for k in specs.TABLE_KEYS[t]})
    features = [(s.name, "BIGINT") for group in tables.values() for s in group]
    features.append(("last_engaged_items", "ARRAY<STRING>"))
    return keys, features


def statements(opts: JobOptions) -> tuple[list[str], list[str]]:
    """(DDL and views to execute, INSERT statements to run as one job)."""
    ddl: list[str] = []
    late: list[str] = []  # one INSERT per sink (UNION ALL): each Kafka sink needs its own transactional id
    updates: list[str] = []
    wm = f"WATERMARK FOR event_time AS event_time - {_seconds(opts.out_of_orderness_s)}"
    meta = ("src_topic STRING METADATA FROM 'topic' VIRTUAL, src_partition INT METADATA FROM 'partition' VIRTUAL, "
            "src_offset BIGINT METADATA FROM 'offset' VIRTUAL")
    tables = _tables()
    needs_items = any(set(g[0].keys) & set(ITEM_COLUMNS) for g in tables.values())

    # --- sinks ---------------------------------------------------------------------------------
    keys, features = output_columns()
    cols = ", ".join([f"{_ident(k)} STRING" for k in keys] + [f"{_ident(f)} {t}" for f, t in features])
    ddl.append(f"CREATE TABLE feature_updates (kafka_key STRING, {_ident('table')} STRING, "
               f"event_timestamp TIMESTAMP_LTZ(3), {cols}) WITH ("
               f"{_kafka_sink(opts, FEATURE_UPDATES.name, 'kafka_key', 'updates')})")
    ddl.append("CREATE TABLE late_events (kafka_key STRING, event_id STRING, event_type STRING, "
               "event_time TIMESTAMP_LTZ(3), user_id STRING, item_id STRING, `topic` STRING, "
               "`partition` INT, `offset` BIGINT, `watermark` TIMESTAMP_LTZ(3)) WITH ("
               f"{_kafka_sink(opts, LATE_EVENTS.name, 'kafka_key', 'late')})")

    # --- sources, late split, dedupe ------------------------------------------------------------
    for et in streamed_event_types():
        ddl.append(f"CREATE TABLE src_{et} (event_id STRING, event_type STRING, event_time TIMESTAMP_LTZ(3), "
                   f"user_id STRING, item_id STRING, {meta}, {wm}) WITH "
                   f"({_kafka_source(opts, TOPICS[et].name, opts.idle_timeout_s)})")
        late.append(
            f"SELECT event_id, event_id, COALESCE(event_type, '{et}'), event_time, user_id, "
            f"item_id, src_topic, src_partition, src_offset, CURRENT_WATERMARK(event_time) FROM src_{et} "
            f"WHERE event_time < CURRENT_WATERMARK(event_time) AND event_id IS NOT NULL")
        ddl.append(f"CREATE VIEW ontime_{et} AS SELECT event_id, event_time, user_id, item_id FROM src_{et} "
                   f"WHERE event_id IS NOT NULL AND event_time IS NOT NULL AND "
                   f"(CURRENT_WATERMARK(event_time) IS NULL OR event_time >= CURRENT_WATERMARK(event_time))")
        ddl.append(f"CREATE VIEW dedup_{et} AS SELECT event_id, event_time, user_id, item_id FROM ("
                   f"SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, event_id "
                   f"ORDER BY event_time ASC) AS rn FROM TABLE(TUMBLE(TABLE ontime_{et}, DESCRIPTOR(event_time), "
                   f"INTERVAL '{opts.dedup_window_s}' SECOND))) WHERE rn = 1")

    # --- items: a versioned view, and events enriched through an event-time temporal join ------
    if needs_items:
        ddl.append(f"CREATE TABLE src_items (event_id STRING, event_time TIMESTAMP_LTZ(3), item_id STRING, "
                   f"category STRING, creator_id STRING, {wm}) WITH "
                   f"({_kafka_source(opts, TOPICS[ITEMS_EVENT].name, opts.items_idle_timeout_s)})")
        ddl.append("CREATE VIEW items_versioned AS SELECT item_id, category, creator_id, event_time FROM ("
                   "SELECT *, ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY event_time DESC) AS rn "
                   "FROM src_items WHERE item_id IS NOT NULL AND event_time IS NOT NULL) WHERE rn = 1")
        for et in sorted({e for g in tables.values() if set(g[0].keys) & set(ITEM_COLUMNS) for s in g
                          for e in s.events}):
            ddl.append(f"CREATE VIEW enriched_{et} AS SELECT e.event_id, e.event_time, e.user_id, e.item_id, "
                       f"i.category, i.creator_id FROM dedup_{et} AS e JOIN items_versioned "
                       f"FOR SYSTEM_TIME AS OF e.event_time AS i ON e.item_id = i.item_id")

    # --- one HOP aggregation per feature table --------------------------------------------------
    for table, group in tables.items():
        tkeys = list(group[0].keys)
        enrich = bool(set(tkeys) & set(ITEM_COLUMNS))
        events = sorted({e for s in group for e in s.events})
        parts = [f"SELECT {', '.join(tkeys)}, '{et}' AS event_type, event_time FROM "
                 f"{'enriched' if enrich else 'dedup'}_{et} WHERE "
                 + " AND ".join(f"{k} IS NOT NULL" for k in tkeys) for et in events]
        ddl.append(f"CREATE VIEW input_{table} AS " + " UNION ALL ".join(parts))
        counts = {s.name: "COUNT(*) FILTER (WHERE event_type IN ("
                          + ", ".join(f"'{e}'" for e in s.events) + "))" for s in group}
        select = [f"CONCAT_WS('|', '{table}', {', '.join(tkeys)})", f"'{table}'", "window_end"]
        select += [k if k in tkeys else "CAST(NULL AS STRING)" for k in keys]
        select += [counts.get(f, f"CAST(NULL AS {t})") for f, t in features]
        updates.append(
            f"SELECT {', '.join(select)} FROM TABLE(HOP(TABLE input_{table}, "
            f"DESCRIPTOR(event_time), {_interval(group[0].slide)}, {_interval(group[0].size)})) "
            f"GROUP BY window_start, window_end, {', '.join(tkeys)}")

    # --- the user's last N engaged items ----------------------------------------------------------
    n = specs.LAST_N_ENGAGED
    select = ["CONCAT_WS('|', 'user_recent', user_id)", "'user_recent'", "event_time"]
    select += [k if k == "user_id" else "CAST(NULL AS STRING)" for k in keys]
    select += [f"CAST(NULL AS {t})" if f != "last_engaged_items" else
               f"ARRAY_REVERSE(ARRAY_AGG(item_id) OVER (PARTITION BY user_id ORDER BY event_time "
               f"ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW))" for f, t in features]
    updates.append(f"SELECT {', '.join(select)} FROM dedup_{ENGAGED_EVENT} "
                   f"WHERE user_id IS NOT NULL AND item_id IS NOT NULL")
    inserts = ["INSERT INTO late_events " + " UNION ALL ".join(late),
               "INSERT INTO feature_updates " + " UNION ALL ".join(updates)]
    return ddl, inserts


def script(opts: JobOptions) -> str:
    """The whole job as one SQL script (for reading, or the SQL client)."""
    ddl, inserts = statements(opts)
    body = ";\n\n".join(ddl) + ";\n\nEXECUTE STATEMENT SET BEGIN\n" + ";\n".join(inserts) + ";\nEND;\n"
    return body
