"""The raw lake (ingest/lake.py) and the archiver's recovery from it (next_offset_from_lake)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import TopicPartition

from eightbox.ingest import lake
from eightbox.ingest.archiver import next_offset_from_lake
from eightbox.ingest.schema import (
    EVENT_TYPES,
    TOPICS,
    Client,
    ImpressionServed,
    ItemClicked,
    ItemPublished,
    to_wire,
)
from eightbox.settings import Settings

T0 = datetime(2026, 11, 26, 10, 15, 30, 123456, tzinfo=timezone.utc)
CLICKS = TOPICS["item_clicked"].name


def wire_row(event, partition: int = 0, offset: int = 0) -> dict:
    return {**json.loads(to_wire(event)), "_partition": partition, "_offset": offset}


def clicks(first: int, last: int, partition: int = 0, when: datetime = T0) -> pa.Table:
    rows = [wire_row(ItemClicked(event_id=f"e{o}", event_time=when, user_id=f"u{o}", item_id="i"), partition, o)
            for o in range(first, last + 1)]
    return lake.to_table("item_clicked", rows)


def write_batch_part(settings: Settings, first: int, last: int, part: int, parts: int,
                     partition: int = 0, when: datetime = T0) -> Path:
    folder = lake.hour_dir(settings.lake_dir, "item_clicked", when)
    path = folder / lake.BatchFile.name(CLICKS, partition, first, last, part, parts)
    lake.write_atomic(clicks(first, last, partition, when), path)
    return path


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_the_arrow_schema_has_every_contract_field_then_partition_and_offset(event_type):
    schema = lake.arrow_schema(event_type)
    assert schema.names == [*EVENT_TYPES[event_type].model_fields, "_partition", "_offset"]
    assert schema.field("_partition").type == pa.int32() and schema.field("_offset").type == pa.int64()
    assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")


def test_the_arrow_schema_types_maps_lists_optionals_and_the_client_struct():
    schema = lake.arrow_schema("impression_served")
    assert schema.field("features").type == pa.map_(pa.string(), pa.float64())
    assert schema.field("model_versions").type == pa.map_(pa.string(), pa.string())
    assert schema.field("score").type == pa.float64() and schema.field("position").type == pa.int64()
    assert schema.field("client").type == pa.struct(
        [("ip", pa.string()), ("device_id", pa.string()), ("user_agent", pa.string())])
    items = lake.arrow_schema("item_published")
    assert items.field("tags").type == pa.list_(pa.string())
    assert items.field("content_vector").type == pa.list_(pa.float64())


def test_to_table_keeps_the_values_of_wire_dicts():
    local = T0.astimezone(timezone(timedelta(hours=1)))
    impression = ImpressionServed(event_id="e1", event_time=local, request_id="r", user_id="u", item_id="i",
                                  position=2, surface="home", model_versions={"ranker": "v3"},
                                  features={"ctr": 0.25, "age": 3.0}, score=0.5,
                                  client=Client(ip="pii_1", user_agent="ua"))
    bare = ImpressionServed(event_id="e2", event_time=T0, request_id="r", user_id="u", item_id="j",
                            position=0, surface="home")
    table = lake.to_table("impression_served", [wire_row(impression, 4, 100), wire_row(bare, 4, 101)])
    assert table.schema == lake.arrow_schema("impression_served")
    first, second = table.to_pylist()
    assert first["event_time"] == T0 and first["event_time"].utcoffset() == timedelta(0)
    assert dict(first["features"]) == {"ctr": 0.25, "age": 3.0}
    assert dict(first["model_versions"]) == {"ranker": "v3"}
    assert first["client"] == {"ip": "pii_1", "device_id": None, "user_agent": "ua"}
    assert (first["position"], first["score"], first["_partition"], first["_offset"]) == (2, 0.5, 4, 100)
    assert second["client"] is None and second["score"] is None  # absent optionals are null
    assert second["features"] == [] and second["experiment_arm"] == "control"


def test_to_table_keeps_lists_of_published_items():
    item = ItemPublished(event_time=T0, item_id="i", creator_id="c", category="x", tags=["a", "b"],
                         content_vector=[0.5, -1.0, 2.0])
    (row,) = lake.to_table("item_published", [wire_row(item)]).to_pylist()
    assert row["tags"] == ["a", "b"] and row["content_vector"] == [0.5, -1.0, 2.0]
    assert row["title"] == "" and row["event_time"] == T0


def test_to_table_of_no_rows_is_an_empty_table_with_the_schema():
    table = lake.to_table("item_engaged", [])
    assert table.num_rows == 0 and table.schema == lake.arrow_schema("item_engaged")


def test_hour_dir_partitions_by_event_date_and_hour(tmp_path):
    assert lake.hour_dir(tmp_path, "item_clicked", T0) == tmp_path / "raw/item_clicked/dt=2026-11-26/hr=10"


def test_a_batch_file_name_parses_back_to_its_parts(tmp_path):
    name = lake.BatchFile.name(CLICKS, 3, 1200, 1299, 1, 2)
    assert name == f"{CLICKS}+3+{1200:019d}-{1299:019d}+1of2.parquet"
    parsed = lake.BatchFile.parse(tmp_path / name)
    assert parsed == lake.BatchFile(tmp_path / name, CLICKS, 3, 1200, 1299, 1, 2)


def test_batch_file_names_sort_by_offset():
    names = [lake.BatchFile.name(CLICKS, 0, f, f + 9, 0, 1) for f in (990, 5, 100)]
    assert [lake.BatchFile.parse(Path(n)).first for n in sorted(names)] == [5, 100, 990]


@pytest.mark.parametrize("name", ["part-0000.parquet", f"{CLICKS}+0+1-2+0of1.csv", f".{CLICKS}+0+1-2+0of1.parquet.tmp",
                                  f"{CLICKS}+x+1-2+0of1.parquet", "notes.txt"])
def test_parse_returns_none_for_foreign_file_names(tmp_path, name):
    assert lake.BatchFile.parse(tmp_path / name) is None


def test_write_atomic_writes_a_readable_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / "b" / "batch.parquet"
    table = clicks(0, 9)
    lake.write_atomic(table, path)
    assert pq.read_table(path).equals(table)
    assert [p.name for p in path.parent.iterdir()] == ["batch.parquet"]


def test_write_atomic_replaces_an_existing_file(tmp_path):
    path = tmp_path / "batch.parquet"
    lake.write_atomic(clicks(0, 9), path)
    lake.write_atomic(clicks(0, 1), path)
    assert pq.read_table(path).num_rows == 2 and len(list(tmp_path.iterdir())) == 1


def test_read_events_of_an_empty_lake_is_an_empty_typed_table(settings):
    table = lake.read_events(settings.lake_dir, "item_clicked")
    assert table.num_rows == 0 and table.schema == lake.arrow_schema("item_clicked")


def test_read_events_dedupes_by_event_id_only_when_asked(settings):
    write_batch_part(settings, 0, 4, 0, 1)
    write_batch_part(settings, 3, 6, 0, 1, partition=1)  # e3, e4 again, as if a producer sent them twice
    deduped = lake.read_events(settings.lake_dir, "item_clicked")
    assert sorted(deduped.column("event_id").to_pylist()) == [f"e{i}" for i in range(7)]
    everything = lake.read_events(settings.lake_dir, "item_clicked", dedupe=False)
    assert everything.num_rows == 9


def test_read_events_reads_across_hours_and_only_the_asked_type(settings):
    write_batch_part(settings, 0, 1, 0, 2)
    write_batch_part(settings, 0, 1, 1, 2, when=T0 + timedelta(hours=3))
    assert lake.read_events(settings.lake_dir, "item_clicked", dedupe=False).num_rows == 4
    assert lake.read_events(settings.lake_dir, "item_engaged").num_rows == 0


def test_next_offset_is_none_for_an_empty_lake(settings):
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) is None
    assert not settings.home.exists()  # looking creates nothing


def test_next_offset_follows_the_highest_complete_batch(settings):
    write_batch_part(settings, 0, 9, 0, 1)
    write_batch_part(settings, 10, 24, 0, 2)
    write_batch_part(settings, 10, 24, 1, 2, when=T0 + timedelta(hours=1))
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) == 25


def test_next_offset_counts_only_its_own_partition(settings):
    write_batch_part(settings, 0, 99, 0, 1, partition=1)
    write_batch_part(settings, 0, 9, 0, 1, partition=10)
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) is None
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 1)) == 100
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 10)) == 10


def test_an_incomplete_batch_is_deleted_and_archiving_resumes_at_its_first_offset(settings):
    done = write_batch_part(settings, 0, 9, 0, 1)
    orphan = write_batch_part(settings, 10, 19, 0, 2)  # part 1 of 2 never made it: a crash between renames
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) == 10
    assert done.exists() and not orphan.exists()
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) == 10  # recovery is repeatable


def test_an_incomplete_first_batch_is_deleted_and_leaves_no_resume_point(settings):
    orphan = write_batch_part(settings, 0, 9, 1, 2, when=T0 + timedelta(hours=1))
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) is None
    assert not orphan.exists()


def test_a_stale_temp_file_of_an_interrupted_write_is_removed(settings):
    done = write_batch_part(settings, 0, 9, 0, 1)
    stale = done.with_name(f".{lake.BatchFile.name(CLICKS, 0, 10, 19, 0, 1)}.tmp")
    stale.write_bytes(b"half a parquet file")
    assert next_offset_from_lake(settings, TopicPartition(CLICKS, 0)) == 10
    assert done.exists() and not stale.exists()
