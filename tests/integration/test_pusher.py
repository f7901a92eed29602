"""The feature pusher as a supervised service, on the session's real Kafka and Redis.

Records in the Flink job's format written to ``eightbox.feature-updates`` become readable through
`OnlineReader` and Feast's `get_online_features`; a record of an aborted transaction is never pushed
(read_committed); malformed records are dead-lettered with their reason; the service's health is
its heartbeat, and it stops cleanly.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import psutil
import pytest
from kafka import KafkaProducer

from eightbox.deploy.pusher_service import heartbeat, pusher
from eightbox.deploy.supervisor import Supervisor
from eightbox.features import store as feature_store
from eightbox.features.online import OnlineReader
from eightbox.ingest.inspect import read_dead_letters
from eightbox.ingest.schema import FEATURE_UPDATES

RUN = uuid.uuid4().hex[:8]
T = datetime(2031, 3, 1, 10, 15, tzinfo=timezone.utc)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def pusher_stack(stack, stack_settings, tmp_path_factory):
    """The pusher service (own home, consumer group and Feast project) on the session's broker and Redis."""
    settings = stack_settings.model_copy(update={
        "home": tmp_path_factory.mktemp("pusher"), "pusher_group": f"pusher-{RUN}", "feast_project": f"p{RUN}"})
    supervisor = Supervisor(settings, services={"pusher": pusher(settings)})
    supervisor.up(progress=lambda *_: None)
    yield settings, supervisor
    supervisor.down(progress=lambda *_: None)


def _send(settings, records: list, transactional: str | None = None, abort: bool = False) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_servers, transactional_id=transactional)
    if transactional:
        producer.init_transactions()
        producer.begin_transaction()
    for key, value in records:
        producer.send(FEATURE_UPDATES.name, key=key.encode(),
                      value=value if isinstance(value, bytes) else json.dumps(value).encode())
    if transactional:
        producer.flush()
        (producer.abort_transaction if abort else producer.commit_transaction)()
    producer.flush()
    producer.close()


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_pusher_service_is_healthy_by_its_heartbeat(pusher_stack):
    settings, supervisor = pusher_stack
    [row] = supervisor.status()
    assert row.name == "pusher" and row.healthy and psutil.pid_exists(row.pid)
    beat = heartbeat(settings)
    assert beat["assigned"] == FEATURE_UPDATES.partitions and time.time() - beat["time"] < 15


def test_updates_become_readable_online_and_malformed_ones_are_dead_lettered(pusher_stack):
    settings, _ = pusher_stack
    i1, i2, u1 = f"i-{RUN}-1", f"i-{RUN}-2", f"u-{RUN}-1"
    flink_records = [  # exactly the Flink job's format (features/stream/sql.py)
        (f"item_session|{i1}", {"table": "item_session", "event_timestamp": iso(T), "item_id": i1,
                                "item_clicks_15m": 3, "item_impressions_15m": 40}),
        (f"item_session|{i2}", {"table": "item_session", "event_timestamp": iso(T), "item_id": i2,
                                "item_clicks_15m": 1, "item_impressions_15m": 9}),
        (f"user_category_session|{u1}|books", {"table": "user_category_session", "event_timestamp": iso(T),
                                               "user_id": u1, "category": "books", "uc_clicks_30m": 2}),
        (f"user_recent|{u1}", {"table": "user_recent", "event_timestamp": "2031-03-01T10:14:03.250Z",
                               "user_id": u1, "last_engaged_items": [i2, i1]}),
    ]
    # A later value for i1 in a transaction that is aborted: a read_committed consumer never sees it.
    _send(settings, [(f"item_session|{i1}", {"table": "item_session", "event_timestamp": iso(T + timedelta(minutes=1)),
                                             "item_id": i1, "item_clicks_15m": 999, "item_impressions_15m": 999})],
          transactional=f"test-pusher-{RUN}", abort=True)
    malformed = [
        (f"bad|{RUN}|1", f"{{not json {RUN}".encode()),
        (f"bad|{RUN}|2", {"table": "item_session", "event_timestamp": iso(T), "item_clicks_15m": 5,
                          "marker": RUN}),  # no item_id, and a field the contract does not have
        (f"bad|{RUN}|3", {"table": "nope", "event_timestamp": iso(T), "item_id": RUN}),
        (f"bad|{RUN}|4", {"table": "item_session", "event_timestamp": iso(T), "item_id": f"x{RUN}",
                          "item_clicks_15m": "three"}),
    ]
    _send(settings, flink_records[:2] + malformed + flink_records[2:], transactional=f"test-pusher-ok-{RUN}")

    refs = ["item_session:item_clicks_15m", "item_session:item_impressions_15m",
            "user_category_session:uc_clicks_30m", "user_recent:last_engaged_items"]
    store = feature_store.get_store(settings)
    reader = OnlineReader(settings, refs, store=store)

    def read():  # every value in (counts not yet pushed read 0): the pusher writes table by table
        out = reader.read(u1, [i1, i2], categories=["books", "books"])
        return out if all(values[0] for values in out.values()) and all(out["item_clicks_15m"]) else None

    fast = _wait(read, what="pushed values in Redis")
    assert fast["item_clicks_15m"] == [3, 1] and fast["item_impressions_15m"] == [40, 9]
    assert fast["uc_clicks_30m"] == [2, 2] and fast["last_engaged_items"] == [[i2, i1]] * 2
    feast = store.get_online_features(features=refs, entity_rows=[
        {"user_id": u1, "item_id": i, "category": "books"} for i in (i1, i2)]).to_dict()
    assert feast == fast

    # Offline: appended in the table's layout, under the day of the value's timestamp.
    files = list((settings.features_dir / "item_session" / f"dt={T:%Y-%m-%d}").glob("push+*.parquet"))
    assert files

    # Every malformed record is in the dead-letter topic with a reason, and nothing else of ours is.
    def ours():
        found = [d for d in read_dead_letters(settings) if d.get("source") == "feature-pusher"
                 and (RUN.encode() in d.get("original", b"") or RUN in d.get("reason", ""))]
        return found if len(found) >= len(malformed) else None

    dead = _wait(ours, timeout=30, what="dead-lettered feature updates")
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == len(malformed), reasons
    assert any("not JSON" in r for r in reasons)
    assert any("key 'item_id' missing" in r or "unexpected fields ['marker']" in r for r in reasons)
    assert any("unknown feature table 'nope'" in r for r in reasons)
    assert any("must be a number" in r for r in reasons)
    assert all(FEATURE_UPDATES.name in r for r in reasons)  # where it came from


def test_pusher_stops_cleanly_and_leaves_no_process(pusher_stack):
    settings, supervisor = pusher_stack
    [row] = supervisor.status()
    family = [psutil.Process(row.pid), *psutil.Process(row.pid).children(recursive=True)]
    supervisor.stop("pusher", timeout=20)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert heartbeat(settings) is None  # removed on a clean exit, so a restart is not taken as healthy
    supervisor.start("pusher", progress=lambda *_: None)  # and it comes back (offsets were committed)
    assert supervisor.status()[0].healthy
