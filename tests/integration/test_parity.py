"""Parity: the Flink streaming job and the Spark backfill give the same value for every STREAMING
spec, per (table, entity keys, window end), from ONE event fixture.

The fixture goes through the real path once: `EventProducer` → Kafka; from there the running Flink
job computes feature updates, and a lake archiver (a group of its own, a home of its own) lands
the same events in Parquet, from which `streaming_backfill` recomputes the tables. It holds
out-of-order events (within the bound), duplicates (same event_id), equal timestamps, events on
window boundaries, a day boundary, and an item whose category changes (both engines use the
category valid at the event's time: the item's latest ItemPublished at or before it, inclusive).
"""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest

from eightbox.features import specs
from eightbox.features.backfill import streaming_backfill
from eightbox.features.spark_session import spark_session
from eightbox.features.stream import control
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import FEATURE_UPDATES, ImpressionServed, ItemClicked, ItemPublished

from .test_stream_job import job_options, read_topic, ts

RUN = uuid.uuid4().hex[:6]
P = f"par{RUN}-"
# Before test_stream_job's 2030 (its job reads these topics from the earliest offset), after
# everything else any test publishes; the fixture crosses midnight 2029-06-30 → 2029-07-01.
DAY = date(2029, 6, 30)
MIDNIGHT = datetime(2029, 7, 1, tzinfo=timezone.utc)
BOUND_S = 2.0


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return MIDNIGHT + timedelta(minutes=minutes, seconds=seconds)


def click(user, item, t, eid=None):
    return ItemClicked(event_id=eid or uuid.uuid4().hex, event_time=t, user_id=P + user, item_id=P + item)


def impression(user, item, t, eid=None):
    return ImpressionServed(event_id=eid or uuid.uuid4().hex, event_time=t, request_id="r", user_id=P + user,
                            item_id=P + item, position=0, surface="home")


def pad(t: datetime, n: int = 72) -> list:
    """Events at `t` for many users: every partition of the click and impression topics gets one,
    so each split is active (it holds the watermark back) before the fixture is read."""
    return [e for k in range(n) for e in (click(f"adv{k}", "adv", t), impression(f"adv{k}", "adv", t))]


def fixture_events() -> tuple[list[ItemPublished], list]:
    items = [
        ItemPublished(event_time=at(-120), item_id=P + "i1", creator_id="c1", category="books"),
        ItemPublished(event_time=at(-120), item_id=P + "i2", creator_id="c1", category="music"),
        ItemPublished(event_time=at(-120), item_id=P + "i3", creator_id="c2", category="books"),
        ItemPublished(event_time=at(-10), item_id=P + "i1", creator_id="c1", category="games"),  # moved
    ]
    dup_click, dup_imp = click("u1", "i1", at(-20, 10)), impression("u2", "i2", at(0, 0))
    groups = [  # each group is sent in its own order; groups in the order of their earliest event
        [click("u1", "i1", at(-25)), click("u1", "i1", at(-25))],  # equal timestamps, two events
        [dup_click, dup_click],  # a duplicate (same event_id)
        [dup_imp, dup_imp],  # a duplicate, exactly at midnight
        [click("u1", "i1", at(-11))],  # on a window boundary, before i1 moves
        [click("u2", "i1", at(-10))],  # exactly when i1 moves: already "games"
        [click("u1", "i1", at(-9, 59.5))],
        [click("u1", "i2", at(-1, 0))], [click("u1", "i2", at(-1, 30))],
        [click("u1", "i3", at(0, 1)), click("u1", "i3", at(0, -0.5))],  # out of order, within the bound
        [click("u2", "i2", at(0, 0))],  # on the day boundary
        [click("u3", "i1", at(5)), click("u3", "i1", at(4, 59.999))],  # out of order, across a boundary
        [click("u3", "i9", at(6))],  # never published: item_session only
        *[[impression(f"u{k % 3}", f"i{k % 4 + 1}", at(-30 + k * 0.75))] for k in range(80)],
        [impression("u1", "i1", at(14)), impression("u1", "i1", at(14))],  # equal timestamps
        [impression("u4", "i3", at(15)), impression("u4", "i3", at(14, 58.6))],  # out of order, on a boundary
    ]
    groups.sort(key=lambda g: min(e.event_time for e in g))
    events = [e for g in groups for e in g]
    return items, events


@pytest.fixture(scope="module")
def parity_job(stack, stack_settings):
    opts = job_options(stack_settings, "parity")
    job_id = control.start(stack_settings, opts=opts)
    control.wait_state(stack_settings, job_id, {"RUNNING"}, timeout=60)
    yield job_id
    try:
        control.stop(stack_settings, job_id, savepoint=False)
    except control.StreamJobError:
        pass


def _mine(keys: tuple) -> bool:
    ids = [k for k in keys if isinstance(k, str) and k.startswith(P)]
    return bool(ids) and not any("adv" in k for k in ids)


def flink_values(settings, table: str, want: set[tuple], timeout: float = 90.0) -> dict[tuple, dict]:
    names = [s.name for s in specs.STREAMING if s.table == table]
    deadline = time.monotonic() + timeout
    while True:
        out: dict[tuple, dict] = {}
        for rec in read_topic(settings, FEATURE_UPDATES.name):
            if rec["table"] != table:
                continue
            key = (*(rec[k] for k in specs.TABLE_KEYS[table]), ts(rec["event_timestamp"]))
            if _mine(key):
                assert key not in out, f"{table} {key} emitted twice"
                out[key] = {n: rec[n] for n in names}
        if want <= set(out) or time.monotonic() > deadline:
            return out
        time.sleep(1.0)


def spark_values(lake_settings, table: str) -> dict[tuple, dict]:
    names = [s.name for s in specs.STREAMING if s.table == table]
    keys = specs.TABLE_KEYS[table]
    out: dict[tuple, dict] = {}
    for f in sorted((lake_settings.features_dir / table).glob("dt=*/*.parquet")):
        for r in pq.read_table(f).to_pylist():
            key = (*(r[k] for k in keys), r[specs.TIMESTAMP].replace(tzinfo=timezone.utc))
            if _mine(key):
                out[key] = {n: r[n] for n in names}
    return out


def test_flink_and_spark_agree_on_every_streaming_spec(stack_settings, parity_job, lake_settings):
    producer = EventProducer(stack_settings)

    def send(batch):
        for e in batch:
            producer.publish(e)
        producer.flush()

    items, events = fixture_events()
    try:
        send(items)
        time.sleep(1)
        send(pad(at(-31)))  # every split active and at -31 min before the fixture is read
        time.sleep(2)
        send(events)
        time.sleep(4)  # the job has read all of it before the watermark jumps
        send(pad(at(120)))  # closes every window of the fixture
    finally:
        producer.close()

    archived = LakeArchiver(lake_settings).run(idle_exit_s=3)
    assert archived >= len(events)
    spark = spark_session(lake_settings)
    try:
        rows = streaming_backfill(lake_settings, DAY, DAY + timedelta(days=2), spark)
    finally:
        spark.stop()
    assert all(rows.get(t, 0) > 0 for t in {s.table for s in specs.STREAMING}), rows

    for table in sorted({s.table for s in specs.STREAMING}):
        batch = spark_values(lake_settings, table)
        assert batch, table
        stream = flink_values(stack_settings, table, set(batch))
        missing = sorted(set(batch) - set(stream), key=str)
        extra = sorted(set(stream) - set(batch), key=str)
        wrong = {k: (stream[k], batch[k]) for k in set(stream) & set(batch) if stream[k] != batch[k]}
        assert not missing and not extra and not wrong, (
            f"{table}: {len(missing)} windows only in Spark {missing[:3]}, {len(extra)} only in Flink "
            f"{extra[:3]}, {len(wrong)} differ (flink, spark) {list(wrong.items())[:3]}")
    categories = {k[1] for k in spark_values(lake_settings, "user_category_session")}
    assert {"books", "games", "music"} <= categories  # i1 counted under both of its categories
