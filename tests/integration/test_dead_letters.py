"""Bad input lands in the dead-letter topic with a reason, and never stops the pipeline."""

from __future__ import annotations

import uuid

from kafka import KafkaProducer

from eightbox.ingest import lake
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.inspect import read_dead_letters
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import TOPICS

from .events import click_stream, malformed_inputs


def test_malformed_input_is_dead_lettered_with_reasons_and_valid_events_still_land(lake_settings):
    prefix = f"dlq-{uuid.uuid4().hex[:6]}"
    bad = malformed_inputs(lake_settings.max_event_bytes)
    before = len(read_dead_letters(lake_settings))
    acked: set[str] = set()
    with EventProducer(lake_settings, on_ack=acked.add) as producer:
        good = click_stream(prefix, 40)
        for i, raw in enumerate(bad.values()):  # bad input interleaved with good events
            producer.publish(good[i])
            producer.publish(raw)
        for event in good[len(bad):]:
            producer.publish(event)
    # Someone writes around the gateway, straight onto a contract topic.
    rogue = KafkaProducer(bootstrap_servers=lake_settings.kafka_servers)
    rogue.send(TOPICS["item_clicked"].name, key=b"u1", value=b'{"event_type": "item_clicked", "oops": 1')
    rogue.send(TOPICS["item_clicked"].name, key=b"u1", value=b'{"event_type": "item_engaged"}')
    rogue.flush()
    rogue.close()

    LakeArchiver(lake_settings).run(idle_exit_s=4)

    letters = read_dead_letters(lake_settings)[before:]
    reasons = [r["reason"] for r in letters if r["source"] == "ingest"]
    assert len(reasons) == len(bad)
    for word in bad:
        assert any(word in reason for reason in reasons), f"no reason mentions {word!r}: {reasons}"
    originals = {r["original"] for r in letters if r["source"] == "ingest"}
    assert bad["not JSON"] in originals, "the original bytes are kept"
    oversize = next(r for r in letters if "oversize" in r["reason"])
    assert oversize["original_size"] > lake_settings.max_event_bytes
    archiver_reasons = [r["reason"] for r in letters if r["source"] == "archiver"]
    assert len(archiver_reasons) == 2 and all(r.startswith("archiver:") for r in archiver_reasons)

    landed = {i for t in ("item_clicked", "item_engaged")
              for i in lake.read_events(lake_settings.lake_dir, t).column("event_id").to_pylist()}
    assert {e.event_id for e in good} <= landed, "valid events around the bad ones all land"
