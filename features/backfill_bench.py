"""Backfill throughput: events/s through `backfill` on a simulated lake written in the archiver's
layout (no Kafka involved); prints one JSON line last.

`events` is the number of events in the lake, `days` the days backfilled one `backfill()` call
each (every call reads up to 30 days of history), `wall_s` the time of those calls (the Spark
session is started before the clock starts; its start-up is reported as `spark_start_s`), and
`range_events_per_s` the rate of one `backfill_days()` call over the same days.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from eightbox.features.backfill import backfill, backfill_days
from eightbox.features.spark_session import spark_session
from eightbox.ingest import lake
from eightbox.ingest.publish import simulation_events
from eightbox.ingest.schema import TOPICS, to_wire
from eightbox.settings import Settings


def write_lake(lake_dir: Path, rows: list[dict], partition: int = 0) -> int:
    """Write wire dicts (each with `event_type`) into the raw lake, one file per type and event
    hour, named like the archiver's (`partition`, offsets in list order; use another partition
    for a second batch). Returns files written."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["event_type"], row["event_time"][:13])].append(row)
    offset = 0
    for (event_type, _), batch in sorted(groups.items()):
        batch = [{**r, "_partition": partition, "_offset": offset + i} for i, r in enumerate(batch)]
        at = datetime.fromisoformat(batch[0]["event_time"].replace("Z", "+00:00"))
        name = lake.BatchFile.name(TOPICS[event_type].name, partition, offset, offset + len(batch) - 1, 0, 1)
        lake.write_atomic(lake.to_table(event_type, batch), lake.hour_dir(lake_dir, event_type, at) / name)
        offset += len(batch)
    return len(groups)


def simulated_rows(hours: float, seed: int) -> list[dict]:
    """The simulator's events as lake rows (wire JSON dicts)."""
    _, events = simulation_events(hours=hours, seed=seed)
    return [json.loads(to_wire(e)) for e in events]


def run(settings: Settings, quick: bool = False) -> dict:
    """Simulate (48 h when quick, else 96 h), write the lake under a throwaway home, backfill
    every day, print progress and one JSON line last; returns that line's dict."""
    hours = 48 if quick else 96
    home = settings.home / "bench" / f"backfill-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={"home": home})
    try:
        print(f"bench backfill: simulating {hours} h of marketplace traffic ...", flush=True)
        rows = simulated_rows(hours, seed=1)
        files = write_lake(settings.lake_dir, rows)
        first = min(datetime.fromisoformat(r["event_time"].replace("Z", "+00:00")) for r in rows).date()
        last = max(datetime.fromisoformat(r["event_time"].replace("Z", "+00:00")) for r in rows).date()
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        print(f"bench backfill: {len(rows)} events in {files} files, days {first} .. {last}", flush=True)
        t0 = time.monotonic()
        spark = spark_session(settings)
        spark_start = time.monotonic() - t0
        t1 = time.monotonic()
        written = {}
        for day in days:
            written = backfill(settings, day, spark)
            print(f"bench backfill: {day} -> {written}", flush=True)
        wall = time.monotonic() - t1
        t2 = time.monotonic()
        backfill_days(settings, first, last, spark)
        range_wall = time.monotonic() - t2
        result = {"events": len(rows), "events_per_s": round(len(rows) / wall, 1), "days": len(days),
                  "wall_s": round(wall, 1), "range_events_per_s": round(len(rows) / range_wall, 1),
                  "range_wall_s": round(range_wall, 1), "spark_start_s": round(spark_start, 1)}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    import sys

    run(Settings(), quick="--quick" in sys.argv[1:])
