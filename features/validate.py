"""Refuse bad lake inputs before a backfill computes or writes anything.

Checks, on the Parquet footers of exactly the files a backfill will read (cheap: no data pages
unless a file lacks column statistics):
- type: every required input column exists with the contract's type (lake.arrow_schema), e.g.
  ``event_time`` must be a UTC timestamp, ``item_id`` a string;
- null spike: per event type and day (``dt=`` folder), the share of nulls in a required column
  may not exceed the normal share (the median over the other days read; 0 for a healthy lake)
  by more than `max_null_share`, counting only days with at least MIN_SPIKE_NULLS nulls.
Either failure raises FeatureValidationError naming the event type, the column and every feature
(count or derived) that depends on it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from eightbox.features.derived import DERIVED_INPUTS
from eightbox.features.specs import WindowedCount
from eightbox.ingest.lake import arrow_schema

# Keys that are attributes of the item, joined from ItemPublished on item_id.
ITEM_ATTRIBUTES = ("category", "creator_id")
ITEM_SOURCE = "item_published"
MAX_NULL_SHARE = 0.01
MIN_SPIKE_NULLS = 10  # fewer nulls than this on a day is noise, not a spike (tiny days, test lakes)


class FeatureValidationError(ValueError):
    """An input column is unfit to compute features from; the message names column and features."""


def spec_inputs(spec: WindowedCount) -> dict[str, set[str]]:
    """Lake columns one windowed count reads, by event type."""
    out: dict[str, set[str]] = {}
    attributes = {k for k in spec.keys if k in ITEM_ATTRIBUTES}
    for event_type in spec.events:
        own = {k for k in spec.keys if k not in ITEM_ATTRIBUTES}
        out[event_type] = {"event_id", "event_time", *own, *(("item_id",) if attributes else ())}
    if attributes:
        out.setdefault(ITEM_SOURCE, set()).update({"item_id", "event_time", *attributes})
    return out


def dependents(specs: Iterable[WindowedCount], derived: Iterable[str] = ()) -> dict[tuple[str, str], list[str]]:
    """{(event_type, column): features that depend on it}, counts first, then derived columns."""
    specs = list(specs)
    deps: dict[tuple[str, str], list[str]] = defaultdict(list)
    for spec in specs:
        for event_type, columns in spec_inputs(spec).items():
            for column in sorted(columns):
                deps[(event_type, column)].append(spec.name)
    for name in derived:
        for source in DERIVED_INPUTS[name]:
            if "." in source:
                deps[tuple(source.split(".", 1))].append(name)  # type: ignore[index]
            else:
                for key, names in list(deps.items()):
                    if source in names and name not in names:
                        names.append(name)
    return dict(deps)


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual) and actual.tz is not None
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return actual == expected


def _null_count(path: Path, meta: pq.FileMetaData, column: str) -> int:
    index = meta.schema.names.index(column)
    total = 0
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_null_count:
            return pq.read_table(path, columns=[column]).column(0).null_count
        total += stats.null_count
    return total


def _day(path: Path) -> str:
    return next((p.name[3:] for p in path.parents if p.name.startswith("dt=")), "?")


def _refuse(problem: str, event_type: str, column: str, deps: dict) -> FeatureValidationError:
    names = ", ".join(deps.get((event_type, column), [])) or "(none)"
    return FeatureValidationError(f"{event_type}.{column}: {problem}; features depending on it: {names}")


def check_files(event_type: str, files: Iterable[Path], deps: dict[tuple[str, str], list[str]],
                max_null_share: float = MAX_NULL_SHARE) -> None:
    """Validate one event type's files against the required columns in `deps`; raises
    FeatureValidationError on a missing column, a changed type or a null spike."""
    required = sorted(c for (et, c) in deps if et == event_type)
    expected = arrow_schema(event_type)
    rows: dict[str, int] = defaultdict(int)
    nulls: dict[tuple[str, str], int] = defaultdict(int)
    for path in files:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        for column in required:
            if column not in schema.names:
                raise _refuse(f"column missing in {path.name}", event_type, column, deps)
            actual, want = schema.field(column).type, expected.field(column).type
            if not _type_ok(actual, want):
                raise _refuse(f"type changed to {actual} (expected {want}) in {path}", event_type, column, deps)
            nulls[(_day(path), column)] += _null_count(path, meta, column)
        rows[_day(path)] += meta.num_rows
    for column in required:
        shares = {day: nulls[(day, column)] / n for day, n in rows.items() if n}
        for day, share in shares.items():
            others = [s for d, s in shares.items() if d != day]
            normal = statistics.median(others) if others else 0.0
            if share > normal + max_null_share and nulls[(day, column)] >= MIN_SPIKE_NULLS:
                raise _refuse(f"null spike on {day}: {share:.1%} null (normal {normal:.1%}, "
                              f"tolerance {max_null_share:.1%})", event_type, column, deps)


def validate_inputs(files: dict[str, list[Path]], specs: Iterable[WindowedCount], derived: Iterable[str] = (),
                    max_null_share: float = MAX_NULL_SHARE) -> None:
    """Validate every event type's files for the given features; raises FeatureValidationError."""
    deps = dependents(specs, derived)
    for event_type, paths in sorted(files.items()):
        check_files(event_type, paths, deps, max_null_share)
