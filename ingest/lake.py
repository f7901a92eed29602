"""The raw lake's layout and Parquet format, derived from the event contract.

Layout: ``<lake>/raw/<event_type>/dt=YYYY-MM-DD/hr=HH/<topic>+<partition>+<first>-<last>+<i>of<n>.parquet``
(partitioned by event time). One archived batch is the offset range ``first..last`` of one
topic-partition, split into ``n`` part files when it spans several hours; a batch counts as
written only when all ``n`` parts exist, which is what makes recovery exact (see archiver).
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AwareDatetime, BaseModel

from .schema import EVENT_TYPES, Client

META_COLUMNS = {"_partition": pa.int32(), "_offset": pa.int64()}
_FILE = re.compile(r"^(?P<topic>.+)\+(?P<partition>\d+)\+(?P<first>\d+)-(?P<last>\d+)\+(?P<part>\d+)of(?P<parts>\d+)\.parquet$")
_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
            datetime: pa.timestamp("us", tz="UTC"), AwareDatetime: pa.timestamp("us", tz="UTC")}


def _arrow_type(annotation) -> pa.DataType:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _arrow_type(inner)
    if origin is typing.Literal:
        return pa.string()
    if origin is dict:
        return pa.map_(_arrow_type(args[0]), _arrow_type(args[1]))
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([(n, _arrow_type(f.annotation)) for n, f in annotation.model_fields.items()])
    if isinstance(annotation, type) and issubclass(annotation, datetime):
        return _SCALARS[datetime]
    return _SCALARS[annotation]


def arrow_schema(event_type: str) -> pa.Schema:
    """Columns of one event type's lake table: the contract's fields, then archive metadata."""
    model = EVENT_TYPES[event_type]
    fields = [pa.field(n, _arrow_type(f.annotation)) for n, f in model.model_fields.items()]
    return pa.schema(fields + [pa.field(n, t) for n, t in META_COLUMNS.items()])


_SCHEMAS = {et: arrow_schema(et) for et in EVENT_TYPES}
_CLIENT_FIELDS = tuple(Client.model_fields)


def to_table(event_type: str, rows: list[dict]) -> pa.Table:
    """Wire dicts (event JSON plus `_partition`/`_offset`) to a typed table; absent optionals are null."""
    schema = _SCHEMAS[event_type]
    columns = []
    for field in schema:
        values = [r.get(field.name) for r in rows]
        if pa.types.is_timestamp(field.type):
            columns.append(pa.array(values, pa.string()).cast(field.type))
        elif pa.types.is_map(field.type):
            columns.append(pa.array([list(v.items()) if v is not None else None for v in values], field.type))
        elif pa.types.is_struct(field.type):
            columns.append(pa.array([v and {k: v.get(k) for k in _CLIENT_FIELDS} for v in values], field.type))
        else:
            columns.append(pa.array(values, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def hour_dir(lake_dir: Path, event_type: str, ts: datetime) -> Path:
    return lake_dir / "raw" / event_type / f"dt={ts:%Y-%m-%d}" / f"hr={ts:%H}"


@dataclass(frozen=True)
class BatchFile:
    path: Path
    topic: str
    partition: int
    first: int
    last: int
    part: int
    parts: int

    @staticmethod
    def name(topic: str, partition: int, first: int, last: int, part: int, parts: int) -> str:
        return f"{topic}+{partition}+{first:019d}-{last:019d}+{part}of{parts}.parquet"

    @classmethod
    def parse(cls, path: Path) -> "BatchFile | None":
        m = _FILE.match(path.name)
        if not m:
            return None
        g = m.groupdict()
        return cls(path, g["topic"], int(g["partition"]), int(g["first"]), int(g["last"]), int(g["part"]), int(g["parts"]))


def batch_files(lake_dir: Path, event_type: str, topic: str, partition: int) -> list[BatchFile]:
    """Every part file this topic-partition has written, in any hour."""
    pattern = f"raw/{event_type}/dt=*/hr=*/{topic}+{partition}+*.parquet"
    return [b for b in (BatchFile.parse(p) for p in lake_dir.glob(pattern)) if b is not None]


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write, fsync, then rename into place: a reader (or a restart) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_events(lake_dir: Path, event_type: str, dedupe: bool = True) -> pa.Table:
    """All archived events of one type. Dedupe by event_id is only a backstop: the archiver
    writes each offset once, so a duplicate here means a producer sent the same event twice."""
    root = lake_dir / "raw" / event_type
    files = sorted(root.glob("dt=*/hr=*/*.parquet"))
    if not files:
        return _SCHEMAS[event_type].empty_table()
    table = pa.concat_tables(pq.read_table(f, schema=_SCHEMAS[event_type]) for f in files)
    if dedupe:
        seen = table.column("event_id").to_pandas().duplicated().to_numpy()
        table = table.filter(pa.array(~seen))
    return table
