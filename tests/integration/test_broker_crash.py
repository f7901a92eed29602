"""The broker killed with SIGKILL mid-stream and restarted: every acknowledged event still lands."""

from __future__ import annotations

import threading
import time
import uuid

from eightbox.ingest import lake
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.producer import DeliveryError, EventProducer

from .events import click_stream

N = 30_000


def test_broker_sigkill_mid_stream_loses_no_acknowledged_event(stack, lake_settings):
    prefix = f"brokercrash-{uuid.uuid4().hex[:6]}"
    acked: set[str] = set()
    producer = EventProducer(lake_settings, on_ack=acked.add)
    unacked_errors: list[Exception] = []

    def produce():
        try:
            for i, event in enumerate(click_stream(prefix, N, seed=3)):
                producer.publish(event)
                if i % 500 == 0:
                    time.sleep(0.05)  # a steady stream, so the kill lands in the middle
            producer.flush()
        except (DeliveryError, Exception) as e:  # sends that failed were never acknowledged
            unacked_errors.append(e)

    thread = threading.Thread(target=produce)
    thread.start()
    while len(acked) < N * 0.3:
        time.sleep(0.02)
    stack.kill("kafka")
    killed_at = len(acked)
    stack.start("kafka")
    thread.join(timeout=300)
    assert not thread.is_alive()
    producer._producer.close()

    assert killed_at < N, "the kill should land before the stream ends"
    LakeArchiver(lake_settings).run(idle_exit_s=5)
    ids = lake.read_events(lake_settings.lake_dir, "item_clicked", dedupe=False).column("event_id").to_pylist()
    ids += lake.read_events(lake_settings.lake_dir, "item_engaged", dedupe=False).column("event_id").to_pylist()
    ours = [i for i in ids if i.startswith(prefix)]
    assert acked <= set(ours), f"{len(acked - set(ours))} acknowledged events lost"
    assert len(ours) == len(set(ours)), "an event landed twice"
