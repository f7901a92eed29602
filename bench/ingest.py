"""`eightbox bench ingest`: events/s from produce to archived Parquet, beside Kafka's own
ProducerPerformance against the same broker in the same run; prints one JSON line last.

Our number is end to end (gateway validation + pseudonymization + kafka-python produce, while an
archiver process consumes, converts and fsyncs Parquet); Kafka's tool only produces, from the JVM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter

import pyarrow.parquet as pq
from kafka.admin import KafkaAdminClient, NewTopic

from eightbox.deploy.services import java_binary
from eightbox.deploy.supervisor import Supervisor
from eightbox.ingest import lake
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.publish import simulation_events
from eightbox.ingest.schema import EVENT_TYPES, TOPICS, to_wire
from eightbox.ingest.topics import ensure_topics
from eightbox.settings import Settings

PERF_TOPIC = "eightbox.bench-producer-perf"


def _archived_rows(settings: Settings) -> int:
    return sum(pq.read_metadata(f).num_rows for f in settings.lake_dir.glob("raw/*/dt=*/hr=*/*.parquet"))


def _kafka_producer_perf(settings: Settings, records: int, record_size: int) -> float:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    if PERF_TOPIC not in admin.list_topics():
        admin.create_topics([NewTopic(PERF_TOPIC, TOPICS["impression_served"].partitions, 1)])
    admin.close()
    cmd = [java_binary(), "-Xmx512m", "-cp", str(settings.jars_dir / "kafka" / "*"),
           "org.apache.kafka.tools.ProducerPerformance", "--topic", PERF_TOPIC,
           "--num-records", str(records), "--record-size", str(record_size), "--throughput", "-1",
           "--producer-props", f"bootstrap.servers={settings.kafka_servers}", "acks=all",
           "enable.idempotence=true", "linger.ms=10", "batch.size=262144", "compression.type=lz4"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # Last summary line: "N records sent, R records/sec (...)"
    return float(re.findall(r"records sent, ([\d.]+) records/sec", out)[-1])


def run(settings: Settings, quick: bool = False) -> dict:
    """The benchmark on a broker of its own (the embedded one, under a throwaway home and ports
    +100), so its events never mix with the demo's topics or lake."""
    started = time.monotonic()
    home = settings.home / "bench" / uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={
        "home": home, "kafka_bootstrap": None, "archiver_group": "bench-archiver",
        "kafka_port": settings.kafka_port + 100, "kafka_controller_port": settings.kafka_controller_port + 100,
    })
    supervisor = Supervisor(settings)
    supervisor.up(["kafka"])
    try:
        return _measure(settings, quick, started)
    finally:
        supervisor.down(["kafka"])
        shutil.rmtree(home, ignore_errors=True)


def _measure(settings: Settings, quick: bool, started: float) -> dict:
    ensure_topics(settings)
    hours = 24.0 if quick else 96.0
    print(f"bench ingest: simulating {hours:g} h of marketplace traffic ...", flush=True)
    _, events = simulation_events(hours=hours, seed=11)
    n = len(events)
    mean_size = sum(len(to_wire(e)) for e in events[:: max(1, n // 2000)]) / len(events[:: max(1, n // 2000)])
    env = {**settings.child_env(), "EIGHTBOX_KAFKA_BOOTSTRAP": settings.kafka_servers}
    archiver = subprocess.Popen([sys.executable, "-m", "eightbox.cli", "archive"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)  # let the archiver join its group, so the clock measures the pipeline, not a join

    print(f"bench ingest: {n} events (mean {mean_size:.0f} B) through gateway → Kafka → archiver → Parquet",
          flush=True)
    acked: set[str] = set()
    t0 = time.monotonic()
    with EventProducer(settings, on_ack=acked.add) as producer:
        for e in events:
            producer.publish(e)
    produce_s = time.monotonic() - t0
    while _archived_rows(settings) < n and archiver.poll() is None:
        time.sleep(0.05)
    end_to_end_s = time.monotonic() - t0
    archiver.terminate()
    archiver.wait(timeout=60)

    ids: Counter = Counter()
    for event_type in EVENT_TYPES:
        table = lake.read_events(settings.lake_dir, event_type, dedupe=False)
        ids.update(table.column("event_id").to_pylist())
    lost = len(acked - set(ids))
    duplicated = sum(c - 1 for c in ids.values() if c > 1)

    print(f"bench ingest: Kafka ProducerPerformance, {n} records of {mean_size:.0f} B ...", flush=True)
    kafka_rate = _kafka_producer_perf(settings, n, int(mean_size))
    result = {
        "events": n,
        "events_per_s": round(n / end_to_end_s, 1),
        "produce_only_events_per_s": round(n / produce_s, 1),
        "kafka_perf_events_per_s": round(kafka_rate, 1),
        "ratio": round(n / end_to_end_s / kafka_rate, 4),
        "lost": lost,
        "duplicated": duplicated,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    return result
