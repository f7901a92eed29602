"""The lake archiver: a consumer group that lands every event in Parquet exactly once.

Protocol (per topic-partition):
  1. Buffer consumed records; flush when the buffer is big or old enough.
  2. Write the buffered offset range as part files (one per event-time hour), each atomically
     (temp file, fsync, rename). The range ``first..last`` and ``i of n`` are in the file names.
  3. Only then commit offset ``last + 1`` to Kafka.
On (re)assignment the lake, not the committed offset, says where to resume: complete batches
(all n parts present) define the next offset; parts of an incomplete batch (a crash between
renames) are deleted and re-read. So a SIGKILL at any instant loses and duplicates nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Callable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from eightbox.settings import Settings

from . import lake
from .producer import EventProducer
from .schema import EVENT_TYPE_OF_TOPIC, TOPICS, InvalidEvent, parse_event

log = logging.getLogger(__name__)


def next_offset_from_lake(settings: Settings, tp: TopicPartition) -> int | None:
    """Where archiving of `tp` resumes, per the lake; removes parts of an unfinished batch."""
    files = lake.batch_files(settings.lake_dir, EVENT_TYPE_OF_TOPIC[tp.topic], tp.topic, tp.partition)
    batches: dict[tuple[int, int], list[lake.BatchFile]] = defaultdict(list)
    for f in files:
        batches[(f.first, f.last)].append(f)
    complete = [last for (first, last), parts in batches.items() if len(parts) == parts[0].parts]
    for (first, last), parts in batches.items():
        if len(parts) != parts[0].parts:
            log.warning("removing %d part(s) of unfinished batch %s[%d] %d-%d", len(parts), tp.topic,
                        tp.partition, first, last)
            for part in parts:
                part.path.unlink(missing_ok=True)
    for stale in settings.lake_dir.glob(f"raw/{EVENT_TYPE_OF_TOPIC[tp.topic]}/dt=*/hr=*/.{tp.topic}+{tp.partition}+*.tmp"):
        stale.unlink(missing_ok=True)  # a write cut short before its rename
    return max(complete) + 1 if complete else None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, archiver: "LakeArchiver"):
        self.archiver = archiver

    def on_partitions_revoked(self, revoked):
        self.archiver.flush([tp for tp in revoked if tp in self.archiver.buffers])

    def on_partitions_assigned(self, assigned):
        for tp in assigned:
            self.archiver.buffers.pop(tp, None)
            resume = next_offset_from_lake(self.archiver.settings, tp)
            if resume is not None:
                self.archiver.consumer.seek(tp, resume)


class LakeArchiver:
    """One member of the archiver group. `run()` until `stop` is set (or, with `idle_exit_s`, until
    it has owned partitions, read nothing for that long, and stands at their ends)."""

    def __init__(self, settings: Settings, dead_letters: EventProducer | None = None,
                 on_progress: Callable[[int], None] | None = None):
        self.settings = settings
        self.consumer = self._join()
        self.dead_letters = dead_letters or EventProducer(settings, source="archiver")
        self.on_progress = on_progress
        self.buffers: dict[TopicPartition, list] = {}
        self._since: dict[TopicPartition, float] = {}
        self.archived = 0

    def _join(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_servers, group_id=self.settings.archiver_group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=5000,
            fetch_max_bytes=32 * 2**20, max_partition_fetch_bytes=4 * 2**20, client_id="eightbox-archiver",
            session_timeout_ms=6000, heartbeat_interval_ms=1500,  # a crashed member is replaced fast
        )
        consumer.subscribe(topics=[t.name for t in TOPICS.values()], listener=_Rebalance(self))
        return consumer

    def _rejoin(self) -> None:
        """A new consumer in place of one that owns nothing (see `archiver_rejoin_after_s`). Nothing is
        lost: unflushed records were never committed, and the lake says where each partition resumes."""
        log.warning("archiver owned no partition for %.0f s: replacing its consumer",
                    self.settings.archiver_rejoin_after_s)
        self.buffers.clear()
        self._since.clear()
        try:
            self.consumer.close(autocommit=False, timeout_ms=2000)
        except Exception as e:  # a stuck client may fail to close cleanly; its group session just expires
            log.warning("closing the stuck consumer failed: %s", e)
        self.consumer = self._join()

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> int:
        stop = stop or threading.Event()
        idle_since = unassigned_since = time.monotonic()
        try:
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=200)
                for tp, records in polled.items():
                    if records:
                        self.buffers.setdefault(tp, []).extend(records)
                        self._since.setdefault(tp, time.monotonic())
                        idle_since = time.monotonic()
                self.flush(self._due())
                if self.consumer.assignment():
                    unassigned_since = time.monotonic()
                elif time.monotonic() - unassigned_since > self.settings.archiver_rejoin_after_s:
                    self._rejoin()
                    unassigned_since = time.monotonic()
                if not self.consumer.assignment():  # idle time counts only once we own partitions
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and not self.buffers and time.monotonic() - idle_since > idle_exit_s:
                    if self._caught_up():
                        break
                    idle_since = time.monotonic()  # a slow fetch on a backlog, not the end of it
            self.flush(list(self.buffers))
        finally:
            self.consumer.close(autocommit=False)
            self.dead_letters.close()
        return self.archived

    def _caught_up(self) -> bool:
        """Whether the consumer stands at the end of every partition it owns. On a busy box `poll`
        can come back empty for seconds in the middle of a backlog (a clean-clone test run's fresh
        group was still 148,000 events behind after an idle exit); idle means nothing is left."""
        try:
            ends = self.consumer.end_offsets(list(self.consumer.assignment()))
            return all(self.consumer.position(tp) >= end for tp, end in ends.items())
        except KafkaError as e:  # the broker is away: nothing more can be read now either
            log.warning("could not compare positions with the partitions' ends (%s); stopping as idle", e)
            return True

    def _due(self) -> list[TopicPartition]:
        now = time.monotonic()
        return [tp for tp, buf in self.buffers.items()
                if len(buf) >= self.settings.archiver_flush_records
                or now - self._since.get(tp, now) >= self.settings.archiver_flush_seconds]

    def flush(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            records = self.buffers.pop(tp, [])
            self._since.pop(tp, None)
            if not records:
                continue
            self._write_batch(tp, records)
            last = records[-1].offset
            try:
                self.consumer.commit({tp: OffsetAndMetadata(last + 1, "", -1)})
            except KafkaError as e:  # the lake already holds the batch: resuming reads it from there
                log.warning("commit of %s failed after archiving (safe): %s", tp, e)
            self.archived += len(records)
            if self.on_progress:
                self.on_progress(self.archived)

    def _write_batch(self, tp: TopicPartition, records: list) -> None:
        event_type = EVENT_TYPE_OF_TOPIC[tp.topic]
        table = self._to_table(event_type, tp, records)
        first, last = records[0].offset, records[-1].offset
        if table.num_rows == 0:  # all dead-lettered: an empty file still records the range as done
            arrived = datetime.fromtimestamp(records[0].timestamp / 1000, timezone.utc)
            groups = [(lake.hour_dir(self.settings.lake_dir, event_type, arrived), table)]
        else:
            hours = pc.floor_temporal(table["event_time"], unit="hour")
            groups = []
            for hour in sorted(pc.unique(hours).to_pylist()):
                part = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
                groups.append((lake.hour_dir(self.settings.lake_dir, event_type, hour), part))
        for i, (folder, part) in enumerate(groups):
            name = lake.BatchFile.name(tp.topic, tp.partition, first, last, i, len(groups))
            lake.write_atomic(part, folder / name)

    def _to_table(self, event_type: str, tp: TopicPartition, records: list) -> pa.Table:
        pairs, bad = [], []  # (record, row) that parsed; (record, reason) that did not
        for r in records:
            try:
                row = orjson.loads(r.value)
                if not isinstance(row, dict) or row.get("event_type") != event_type:
                    raise ValueError(f"not a {event_type} event")
            except ValueError as e:
                bad.append((r, f"archiver: {e}"))
                continue
            row["_partition"], row["_offset"] = tp.partition, r.offset
            pairs.append((r, row))
        try:
            table = lake.to_table(event_type, [row for _, row in pairs])
        except (pa.ArrowException, ValueError, TypeError):
            # Slow path, only when someone wrote around the gateway: find the bad rows one by one.
            good = []
            for r, row in pairs:
                try:
                    parse_event({k: v for k, v in row.items() if not k.startswith("_")})
                    lake.to_table(event_type, [row])
                    good.append(row)
                except (InvalidEvent, pa.ArrowException, ValueError, TypeError) as e:
                    bad.append((r, f"archiver: {getattr(e, 'reason', e)}"))
            table = lake.to_table(event_type, good)
        for r, reason in bad:
            self.dead_letters.dead_letter(r.value, reason)
        if bad:
            self.dead_letters.flush()
        return table
