"""The lake archiver under crashes: SIGKILL at any moment, restart, and the lake still holds every
acknowledged event exactly once — checked without the event_id dedupe backstop."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter

import pyarrow.parquet as pq

from eightbox.ingest import lake
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import EVENT_TYPES

from .conftest import eightbox_bin
from .events import click_stream

N = 100_000


def _archived_rows(settings) -> int:
    """Rows in the lake now. A file listed can be gone a moment later (a restarted archiver replaces
    parts a killed one left unfinished, see ingest/archiver.py), so a vanished file counts nothing."""
    total = 0
    for f in settings.lake_dir.glob("raw/*/dt=*/hr=*/*.parquet"):
        try:
            total += pq.read_metadata(f).num_rows
        except FileNotFoundError:
            pass
    return total


def _lake_ids(settings) -> Counter:
    ids: Counter = Counter()
    for event_type in EVENT_TYPES:
        ids.update(lake.read_events(settings.lake_dir, event_type, dedupe=False).column("event_id").to_pylist())
    return ids


def _archiver(settings, log) -> subprocess.Popen:
    return subprocess.Popen([eightbox_bin(), "archive", "--idle-exit", "6"], env=settings.child_env(),
                            stdout=log, stderr=subprocess.STDOUT)


def test_archiver_killed_three_times_loses_and_duplicates_nothing(lake_settings, tmp_path):
    settings = lake_settings.model_copy(update={"archiver_flush_records": 1500, "archiver_flush_seconds": 0.3})
    prefix = f"crash-{uuid.uuid4().hex[:6]}"
    acked: set[str] = set()
    with EventProducer(settings, on_ack=acked.add) as producer:
        for event in click_stream(prefix, N):
            producer.publish(event)
    assert len(acked) == N

    log = open(tmp_path / "archivers.log", "wb")
    kills = []
    for threshold in (0.20, 0.45, 0.70):  # each kill after at least 20% more progress
        proc = _archiver(settings, log)
        deadline = time.monotonic() + 180
        while _archived_rows(settings) < threshold * N:
            assert proc.poll() is None, "archiver exited early; see archivers.log"
            assert time.monotonic() < deadline, "archiver made no progress"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no flush, no commit, maybe mid-write
        proc.wait()
        kills.append(_archived_rows(settings))

    # Finish with two archivers sharing the partitions through the group.
    finishers = [_archiver(settings, log) for _ in range(2)]
    for proc in finishers:
        assert proc.wait(timeout=300) == 0

    ids = _lake_ids(settings)
    ours = {i: c for i, c in ids.items() if i.startswith(prefix)}
    duplicated = {i: c for i, c in ids.items() if c > 1}
    assert kills == sorted(kills) and kills[0] >= 0.2 * N
    assert not duplicated, f"{len(duplicated)} duplicated, e.g. {list(duplicated)[:3]}"
    assert set(ours) == acked, f"lost {len(acked - set(ours))}"
    assert not list(settings.lake_dir.glob("raw/*/dt=*/hr=*/.*.tmp")), "temp files left in the lake"


def test_an_archiver_whose_consumer_never_gets_partitions_replaces_it(lake_settings, caplog):
    """kafka-python 3.0.12 once left an archiver's consumer looking up its coordinator for good (the
    group empty, the loop spinning): after `archiver_rejoin_after_s` without partitions a fresh
    consumer takes over, and every event still lands."""
    from kafka import KafkaConsumer

    from eightbox.ingest.archiver import LakeArchiver

    settings = lake_settings.model_copy(update={"archiver_rejoin_after_s": 2.0})
    prefix = f"stuck-{uuid.uuid4().hex[:6]}"
    with EventProducer(settings) as producer:
        events = click_stream(prefix, 50)
        for event in events:
            producer.publish(event)
    archiver = LakeArchiver(settings)
    archiver.consumer.close(autocommit=False)
    # A stand-in for the stuck client: a live consumer that owns no partition of the archive.
    archiver.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, group_id=f"{prefix}-stuck")
    archiver.consumer.subscribe(topics=[f"{prefix}-no-such-topic"])
    with caplog.at_level("WARNING", logger="eightbox.ingest.archiver"):
        archiver.run(idle_exit_s=4)
    assert any("replacing its consumer" in r.getMessage() for r in caplog.records)
    landed = set(lake.read_events(settings.lake_dir, "item_clicked").column("event_id").to_pylist())
    assert {e.event_id for e in events if e.event_type == "item_clicked"} <= landed
