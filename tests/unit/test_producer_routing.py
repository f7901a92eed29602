"""The gateway's routing logic, with a fake Kafka producer (pure logic; the real broker is covered
by the integration tests)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from eightbox.ingest.producer import DeliveryError, EventProducer, decode_dead_letter
from eightbox.ingest.schema import DEAD_LETTER, TOPICS, Client, ItemClicked, ItemPublished
from eightbox.settings import Settings


class FakeFuture:
    def __init__(self, fail: Exception | None):
        self.fail = fail
        self.callbacks, self.errbacks = [], []

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))

    def add_errback(self, fn, *args):
        self.errbacks.append((fn, args))

    def resolve(self):
        for fn, args in (self.errbacks if self.fail else self.callbacks):
            fn(*args, self.fail or "metadata")


class FakeKafka:
    def __init__(self, fail_topics=()):
        self.sent, self.futures, self.fail_topics = [], [], set(fail_topics)

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))
        future = FakeFuture(RuntimeError("broker down") if topic in self.fail_topics else None)
        self.futures.append(future)
        return future

    def flush(self, timeout=None):
        for f in self.futures:
            f.resolve()
        self.futures = []

    def close(self):
        pass


AT = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def _gateway(**kw):
    kafka = FakeKafka(**kw)
    acked = []
    return EventProducer(Settings(), producer=kafka, on_ack=acked.append), kafka, acked


def test_valid_events_go_to_their_topic_keyed_by_user_and_items_by_item():
    gateway, kafka, acked = _gateway()
    gateway.publish(ItemClicked(event_id="c1", event_time=AT, user_id="u7", item_id="i1"))
    gateway.publish(ItemPublished(event_id="p1", event_time=AT, item_id="i9", creator_id="c", category="x"))
    gateway.flush()
    assert [(t, k) for t, k, _ in kafka.sent] == [(TOPICS["item_clicked"].name, b"u7"),
                                                  (TOPICS["item_published"].name, b"i9")]
    assert acked == ["c1", "p1"]


def test_invalid_input_goes_to_the_dead_letter_topic_with_reason_and_original_bytes():
    gateway, kafka, acked = _gateway()
    gateway.publish(b'{"event_type": "item_clicked", "user_id": "u1"}')
    gateway.flush()
    (topic, _, value), = kafka.sent
    record = decode_dead_letter(value)
    assert topic == DEAD_LETTER.name and "item_id" in record["reason"] and "event_time" in record["reason"]
    assert json.loads(record["original"]) == {"event_type": "item_clicked", "user_id": "u1"}
    assert acked == [] and gateway.dead_lettered == 1


def test_personal_data_is_tokenized_before_it_is_sent():
    gateway, kafka, _ = _gateway()
    gateway.publish(ItemClicked(event_time=AT, user_id="u", item_id="i",
                                client=Client(ip="198.51.100.4", device_id="dev-1")))
    gateway.flush()
    value = kafka.sent[0][2]
    assert b"198.51.100.4" not in value and b"dev-1" not in value and b"pii_" in value


def test_flush_raises_naming_the_events_the_broker_did_not_take():
    gateway, kafka, acked = _gateway(fail_topics={TOPICS["item_clicked"].name})
    gateway.publish(ItemClicked(event_id="lost-1", event_time=AT, user_id="u", item_id="i"))
    with pytest.raises(DeliveryError) as err:
        gateway.flush()
    assert err.value.event_ids == ["lost-1"] and acked == []
    gateway.flush()  # the failure was reported once; nothing is pending now
