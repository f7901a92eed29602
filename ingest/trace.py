"""Following one event from the gateway to its Parquet file: for the demo, and for students."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from eightbox.settings import Settings

from . import lake
from .schema import TOPICS


def locate(settings: Settings, event_type: str, event_id: str) -> dict | None:
    """Where an archived event is: its row, topic-partition-offset and lake file; None if absent."""
    table = lake.read_events(settings.lake_dir, event_type)
    rows = table.filter(pc.equal(table["event_id"], event_id)).to_pylist()
    if not rows:
        return None
    row = rows[0]
    topic, partition, offset = TOPICS[event_type].name, row["_partition"], row["_offset"]
    folder = lake.hour_dir(settings.lake_dir, event_type, row["event_time"])
    files = [b for b in (lake.BatchFile.parse(p) for p in folder.glob(f"{topic}+{partition}+*.parquet"))
             if b and b.first <= offset <= b.last]
    path: Path | None = files[0].path if files else None
    return {"row": row, "topic": topic, "partition": partition, "offset": offset, "file": path}
