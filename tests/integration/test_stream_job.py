"""The streaming feature job on a real Flink session cluster and the real broker.

Every emitted window count is compared with `specs.window_counts` over the same deduplicated,
non-late events; then the TaskManager is SIGKILLed after three checkpoints and the job restarted
from its latest checkpoint, and the counts must still match exactly (nothing lost, nothing twice).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaConsumer

from eightbox.features import specs
from eightbox.features.stream import control
from eightbox.features.stream.sql import JobOptions
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import (FEATURE_UPDATES, LATE_EVENTS, ImpressionServed, ItemClicked, ItemEngaged,
                                    ItemPublished)

RUN = uuid.uuid4().hex[:6]
P = f"fs{RUN}-"  # every user and item id of this module starts with it
B = datetime(2030, 1, 1, tzinfo=timezone.utc)  # after any event time other tests publish
BOUND_S = 2.0


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return B + timedelta(minutes=minutes, seconds=seconds)


@pytest.fixture(scope="module")
def flink(stack):
    """The session stack's Flink cluster (JobManager + TaskManager), started with the rest."""
    assert {"flink-jobmanager", "flink-taskmanager"} <= set(stack.services)
    return stack


def job_options(settings, name: str) -> JobOptions:
    """Options for a test's own job: its own group and transactions, and only records published from
    now on (other tests' later event times would move the watermark past ours)."""
    return JobOptions(kafka_servers=settings.kafka_servers, out_of_orderness_s=BOUND_S, idle_timeout_s=300.0, items_idle_timeout_s=5.0,
                      checkpoint_interval_s=2.0, group_id=f"flink-{name}-{RUN}",
                      startup_mode="timestamp", startup_timestamp_ms=int(time.time() * 1000) - 1000,
                      transactional_id_prefix=f"eightbox-{name}-{RUN}")


@pytest.fixture(scope="module")
def job(flink, stack_settings):
    opts = job_options(stack_settings, "test")
    job_id = control.start(stack_settings, opts=opts)
    control.wait_state(stack_settings, job_id, {"RUNNING"}, timeout=60)
    state = {"job_id": job_id, "opts": opts}
    yield state
    try:
        control.stop(stack_settings, state["job_id"], savepoint=False)
    except control.StreamJobError:
        pass


class Published:
    """Everything this module sent, to rebuild the reference from."""

    def __init__(self, settings):
        self.producer = EventProducer(settings)
        self.events: list = []  # valid, on-time (duplicates included: the reference dedupes)
        self.items: list[ItemPublished] = []

    def send(self, *events, count: bool = True):
        for e in events:
            self.producer.publish(e)
            if isinstance(e, ItemPublished):
                self.items.append(e)
            elif count:
                self.events.append(e)
        self.producer.flush()

    def rows(self) -> list[dict]:
        """Deduplicated rows with the item's category at the event's time (the temporal join)."""
        seen, rows = set(), []
        for e in self.events:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            versions = [i for i in self.items if i.item_id == e.item_id and i.event_time <= e.event_time]
            category = max(versions, key=lambda i: i.event_time).category if versions else None
            rows.append({"event_type": e.event_type, "event_time": e.event_time, "user_id": e.user_id,
                         "item_id": e.item_id, "category": category, "event_id": e.event_id})
        return rows


def click(user, item, t, eid=None):
    return ItemClicked(event_id=eid or uuid.uuid4().hex, event_time=t, user_id=P + user, item_id=P + item)


def impression(user, item, t):
    return ImpressionServed(event_time=t, request_id="r", user_id=P + user, item_id=P + item, position=0,
                            surface="home")


def engaged(user, item, t, eid=None):
    return ItemEngaged(event_id=eid or uuid.uuid4().hex, event_time=t, user_id=P + user, item_id=P + item,
                       kind="like")


def advance(pub: Published, t: datetime, n: int = 36):
    """Later events for many users (so every partition of every topic moves the watermark)."""
    adv = []
    for k in range(n):
        adv += [click(f"adv{k}", "adv", t), impression(f"adv{k}", "adv", t), engaged(f"adv{k}", "adv", t)]
    pub.send(*adv, count=False)


def read_topic(settings, topic: str) -> list[dict]:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level="read_committed",
                             consumer_timeout_ms=1500)
    try:
        out = []
        for m in consumer:
            try:  # the pusher's tests put malformed records on this topic on purpose; they are not ours
                out.append(json.loads(m.value))
            except ValueError:
                continue
        return out
    finally:
        consumer.close()


def mine(rec: dict) -> bool:
    ids = [rec.get(k) for k in ("user_id", "item_id") if rec.get(k)]
    return bool(ids) and all(i.startswith(P) for i in ids) and not any("adv" in i for i in ids)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def expected(rows: list[dict], since: datetime) -> dict[tuple, dict[str, int]]:
    """{(table, *keys, end): {feature: count}} for windows ending after `since`."""
    out: dict[tuple, dict[str, int]] = {}
    for spec in specs.STREAMING:
        for (*key, end), n in specs.window_counts(spec, rows).items():
            if end > since and not any("adv" in str(k) for k in key):
                out.setdefault((spec.table, *key, end), {})[spec.name] = n
    for k, feats in out.items():
        for spec in specs.STREAMING:
            if spec.table == k[0]:
                feats.setdefault(spec.name, 0)
    return out


def emitted(settings, since: datetime) -> list[tuple[tuple, dict]]:
    out = []
    for rec in read_topic(settings, FEATURE_UPDATES.name):
        if rec["table"] in {s.table for s in specs.STREAMING} and mine(rec) and ts(rec["event_timestamp"]) > since:
            key = (rec["table"], *(rec[k] for k in specs.TABLE_KEYS[rec["table"]]), ts(rec["event_timestamp"]))
            out.append((key, {s.name: rec[s.name] for s in specs.STREAMING if s.table == rec["table"]}))
    return out


def wait_for(settings, want: dict, since: datetime, timeout: float = 90.0) -> list[tuple[tuple, dict]]:
    deadline = time.monotonic() + timeout
    got: list = []
    while time.monotonic() < deadline:
        got = emitted(settings, since)
        if set(want) <= {k for k, _ in got}:
            return got
        time.sleep(1.0)
    missing = sorted(set(want) - {k for k, _ in got}, key=str)
    raise AssertionError(f"{len(missing)} windows never emitted, e.g. {missing[:3]}; got {len(got)} records")


def assert_exact(got: list[tuple[tuple, dict]], want: dict):
    dup = [k for k, n in Counter(k for k, _ in got).items() if n > 1]
    assert not dup, f"{len(dup)} windows emitted twice, e.g. {dup[:3]}"
    values = dict(got)
    extra = sorted(set(values) - set(want), key=str)
    assert not extra, f"windows that should not exist: {extra[:3]}"
    wrong = {k: (values[k], v) for k, v in want.items() if values[k] != v}
    assert not wrong, f"{len(wrong)} wrong counts (got, want), e.g. {list(wrong.items())[:3]}"


@pytest.fixture(scope="module")
def pub(stack, stack_settings):
    p = Published(stack_settings)
    yield p
    p.producer._producer.close()


def test_windows_match_reference_with_dedupe_out_of_order_and_late(stack_settings, job, pub):
    pub.send(
        ItemPublished(event_time=at(-60), item_id=P + "i1", creator_id="c1", category="books"),
        ItemPublished(event_time=at(-60), item_id=P + "i2", creator_id="c1", category="music"),
        ItemPublished(event_time=at(-60), item_id=P + "i3", creator_id="c2", category="books"),
        ItemPublished(event_time=at(20), item_id=P + "i1", creator_id="c1", category="games"),  # re-categorised
    )
    time.sleep(1)
    dup_click, dup_eng = click("u1", "i1", at(0, 10)), engaged("u1", "i2", at(4))
    pub.send(
        click("u1", "i1", at(0, 10)), click("u1", "i1", at(0, 10)),  # equal timestamps, two events
        dup_click, dup_click,  # a duplicate (same event_id)
        click("u1", "i1", at(1)),  # exactly on a window boundary: belongs to the window ending at 2 min
        click("u1", "i2", at(1, 30)),
        click("u1", "i1", at(2, 0.5)), click("u1", "i3", at(1, 59)),  # out of order, within the bound
        click("u2", "i2", at(5)), click("u2", "i1", at(21)),  # i1 is "games" from minute 20
        click("u3", "i9", at(6)),  # an item never published: no category, still an item_session count
        *[impression(f"u{k % 3}", f"i{k % 4 + 1}", at(k * 0.7)) for k in range(30)],
        engaged("u1", "i1", at(3)), dup_eng, dup_eng, engaged("u1", "i3", at(7)),
    )
    time.sleep(4)  # the job has read all of it before the watermark jumps
    advance(pub, at(120))
    want = expected(pub.rows(), since=B - timedelta(hours=1))
    assert any(k[0] == "user_category_session" and k[2] == "games" for k in want)
    got = wait_for(stack_settings, want, since=B - timedelta(hours=1))
    assert_exact(got, want)

    recent = [r for r in read_topic(stack_settings, FEATURE_UPDATES.name)
              if r["table"] == "user_recent" and r.get("user_id") == P + "u1"]
    last = max(recent, key=lambda r: ts(r["event_timestamp"]))
    assert last["last_engaged_items"] == [P + "i3", P + "i2", P + "i1"]  # newest first, duplicate once
    assert ts(last["event_timestamp"]) == at(7)

    late = click("u1", "i1", at(5))  # 2 hours behind the watermark
    pub.send(late, count=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hits = [r for r in read_topic(stack_settings, LATE_EVENTS.name) if r["event_id"] == late.event_id]
        if hits:
            break
        time.sleep(1)
    assert len(hits) == 1 and hits[0]["event_type"] == "item_clicked" and hits[0]["topic"] == "eightbox.clicks"
    assert_exact(emitted(stack_settings, since=B - timedelta(hours=1)), want)  # the late click changed nothing


def test_sigkill_and_restart_from_checkpoint_loses_and_duplicates_nothing(stack_settings, flink, job, pub):
    deadline = time.monotonic() + 60
    while control.status(stack_settings, job["job_id"]).get("checkpoints_completed", 0) < 3:
        assert time.monotonic() < deadline, "three checkpoints did not complete"
        time.sleep(1)
    rng = random.Random(7)
    phase = at(180)

    def burst(n, start_min, span_min):
        return [click(f"u{rng.randrange(8)}", f"i{rng.randrange(1, 4)}", phase + timedelta(
            minutes=start_min + rng.uniform(0, span_min))) for _ in range(n)] + [
            impression(f"u{rng.randrange(8)}", f"i{rng.randrange(1, 4)}", phase + timedelta(
                minutes=start_min + rng.uniform(0, span_min))) for _ in range(n)]

    first = burst(150, 0, 10)
    first.sort(key=lambda e: e.event_time)
    pub.send(*first)
    advance(pub, phase + timedelta(minutes=40), n=36)  # closes part of the phase's windows
    time.sleep(3)  # some windows are out, some only in an open transaction or in state
    flink.kill("flink-taskmanager")
    new_id = control.restart(stack_settings, job["job_id"], opts=job["opts"])
    job["job_id"] = new_id
    flink.start("flink-taskmanager")
    control.wait_state(stack_settings, new_id, {"RUNNING"}, timeout=60)
    second = burst(150, 50, 10)
    second.sort(key=lambda e: e.event_time)
    pub.send(*second)
    time.sleep(3)
    advance(pub, phase + timedelta(minutes=120), n=36)
    want = expected(pub.rows(), since=phase)
    try:
        got = wait_for(stack_settings, want, since=phase)
    except AssertionError as e:
        ids = {ev.event_id for ev in first + second}
        late = [r for r in read_topic(stack_settings, LATE_EVENTS.name) if r["event_id"] in ids]
        raise AssertionError(f"{e}; {len(late)} of this phase's events went to LATE_EVENTS, "
                             f"e.g. {late[:2]}") from None
    try:
        assert_exact(got, want)
    except AssertionError as e:
        ids = {ev.event_id for ev in first + second}
        late = [r for r in read_topic(stack_settings, LATE_EVENTS.name) if r["event_id"] in ids]
        raise AssertionError(f"{e}; {len(late)} of this phase's events went to LATE_EVENTS "
                             f"({Counter(r['event_type'] for r in late)}), e.g. {late[:2]}") from None
    assert control.status(stack_settings, new_id)["state"] == "RUNNING"
    assert control.ensure(stack_settings, opts=job["opts"]) == (new_id, "already running")
