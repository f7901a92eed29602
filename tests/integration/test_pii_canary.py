"""A PII canary: sentinel e-mails, IPs and device ids never appear in a topic, the lake or a log."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone

from kafka import KafkaConsumer

from eightbox.ingest import lake
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import ALL_TOPICS, EVENT_TYPES, Client, ItemClicked, ItemPublished, UserSignedUp

EMAIL, IP, IP6, DEVICE = "canary.7f3a@example.org", "203.0.113.77", "2001:db8::7f3a", "device-CANARY-9b1"
SENTINELS = [EMAIL, IP, IP6, DEVICE]


def _canary_inputs(tag: str) -> list:
    at = datetime(2026, 11, 21, 9, tzinfo=timezone.utc)
    client = Client(ip=IP, device_id=DEVICE, user_agent="canary-agent")
    return [
        UserSignedUp(event_id=f"{tag}-1", event_time=at, user_id="u-canary", email=EMAIL, client=client),
        ItemClicked(event_id=f"{tag}-2", event_time=at, user_id="u-canary", item_id="i1",
                    client=Client(ip=IP6, device_id=DEVICE)),
        ItemPublished(event_id=f"{tag}-3", event_time=at, item_id="i-canary", creator_id="c1", category="c",
                      title=f"write to {EMAIL}", description=f"seen from {IP} and {IP6}."),
        # Malformed, so kept in the dead-letter topic: still no raw personal data.
        json.dumps({"event_type": "item_clicked", "user_id": "u", "client": {"ip": IP, "device_id": DEVICE},
                    "note": f"{EMAIL} {IP6}"}).encode(),
        f"not json {EMAIL} {IP} device_id={DEVICE}".encode(),
    ]


def _all_topic_bytes(settings) -> bytes:
    consumer = KafkaConsumer(*[t.name for t in ALL_TOPICS], bootstrap_servers=settings.kafka_servers,
                             group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=4000)
    chunks = [(m.key or b"") + m.value for m in consumer]
    consumer.close()
    return b"\n".join(chunks)


def test_pii_canary_never_reaches_topics_lake_or_logs(stack, lake_settings, caplog):
    caplog.set_level(logging.DEBUG)
    tag = f"pii-{uuid.uuid4().hex[:6]}"
    acked: set[str] = set()
    with EventProducer(lake_settings, on_ack=acked.add) as producer:
        for item in _canary_inputs(tag):
            producer.publish(item)
    assert len(acked) == 3
    LakeArchiver(lake_settings).run(idle_exit_s=4)

    topics = _all_topic_bytes(lake_settings)
    assert tag.encode() in topics, "the canary events are in the topics (the check can fail)"
    tables = [lake.read_events(lake_settings.lake_dir, t) for t in EVENT_TYPES]
    lake_text = "\n".join(str(t.to_pylist()) for t in tables)
    assert tag in lake_text
    logs = caplog.text + "".join(p.read_text(errors="replace")
                                 for p in (stack.settings.run_dir / "logs").glob("*.log"))
    for sentinel in SENTINELS:
        assert sentinel.encode() not in topics, f"{sentinel} reached a topic"
        assert sentinel not in lake_text, f"{sentinel} reached the lake"
        assert sentinel not in logs, f"{sentinel} reached a log"
