"""The Spark backfill on real Spark (local mode, one session for the module) over small lakes
written in the archiver's layout; no Kafka, Redis or MLflow (the `stack` fixture is not used)."""

from __future__ import annotations

import hashlib
import random
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from eightbox.features import derived
from eightbox.features.backfill import (backfill, backfill_days, item_versions, lake_files, load_events,
                                        spark_window_counts, streaming_backfill)
from eightbox.features.backfill_bench import write_lake
from eightbox.features.spark_session import spark_session
from eightbox.features.specs import DAILY, EPOCH, STREAMING, TABLE_KEYS, TIMESTAMP, smoothed_ctr, table_features, window_counts
from eightbox.features.validate import FeatureValidationError
from eightbox.ingest import lake
from eightbox.settings import Settings

D0 = date(2024, 3, 10)  # the fixture's days: D0-1, D0, D0+1 (events from D0-2 to D0+2)
T0 = datetime(2024, 3, 10, tzinfo=timezone.utc)
FAR = datetime(2030, 1, 1, tzinfo=timezone.utc)
DAILY_TABLES = ("user_daily", "user_category_daily", "item_daily", "creator_daily")
ITEMS = {f"i{n}": (f"c{n % 3}", f"k{n % 2}") for n in range(8)}  # item -> (category, creator)
LATE_ITEM = "i7"  # published at T0 + 12h: earlier events on it have no category yet
MOVED_ITEM, MOVED_AT, MOVED_TO = "i2", T0 + timedelta(hours=6), "c-moved"  # re-published: new category from then on


def _wire(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event(event_type: str, event_id: str, at: datetime, user: str | None = "u1", item: str | None = "i1") -> dict:
    row = {"event_type": event_type, "event_id": event_id, "event_time": _wire(at), "user_id": user, "item_id": item}
    if event_type == "impression_served":
        row.update(request_id=f"r-{event_id}", position=0, surface="home")
    if event_type == "item_engaged":
        row.update(kind="like", value=1.0)
    return row


def _published(item: str, at: datetime, category: str | None = None, event_id: str | None = None) -> dict:
    default, creator = ITEMS[item]
    return {"event_type": "item_published", "event_id": event_id or f"pub-{item}", "event_time": _wire(at),
            "item_id": item, "creator_id": creator, "category": category or default}


def _stream(seed: int = 7) -> list[dict]:
    """Out of order, with duplicates, equal timestamps, boundary instants and a day crossing."""
    rng = random.Random(seed)
    rows = [_published(i, T0 - timedelta(days=40 if i != LATE_ITEM else -0.5)) for i in ITEMS]
    rows.append(_published(MOVED_ITEM, MOVED_AT, MOVED_TO, f"pub-{MOVED_ITEM}-v2"))
    types = ("item_clicked", "impression_served", "impression_served", "item_engaged")
    boundaries = [T0, T0 + timedelta(days=1), T0 - timedelta(days=1), T0 + timedelta(minutes=15),
                  T0 - timedelta(minutes=1), T0 + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999)]
    for n in range(700):
        if n % 10 == 0:
            at = rng.choice(boundaries)  # exactly on window ends (and equal timestamps)
        else:
            at = T0 + timedelta(microseconds=rng.randrange(-2 * 86_400_000_000, 2 * 86_400_000_000))
        rows.append(_event(rng.choice(types), f"e{n}", at, f"u{rng.randrange(6)}", rng.choice([*ITEMS, "i99"])))
    rows.append(_event("item_clicked", "e-nokey", T0, None, "i1"))  # a missing key: never counted
    rng.shuffle(rows)
    return rows


def _dupes(rows: list[dict]) -> list[dict]:
    return [r for r in rows[::25] if r["event_type"] != "item_published"]  # re-sent: same event_id


def _reference_rows(rows: list[dict]) -> list[dict]:
    """Rows as the reference sees them: typed, once per event_id, with the item attributes valid
    at the event's time (from the item's latest ItemPublished at or before it)."""
    seen, out = set(), []
    pubs = [r for r in rows if r["event_type"] == "item_published"]
    for r in rows:
        if (r["event_type"], r["event_id"]) in seen:
            continue
        seen.add((r["event_type"], r["event_id"]))
        at = datetime.fromisoformat(r["event_time"])
        versions = [p for p in pubs if p["item_id"] == r["item_id"] and datetime.fromisoformat(p["event_time"]) <= at]
        latest = max(versions, key=lambda p: (datetime.fromisoformat(p["event_time"]), p["event_id"]), default=None)
        category, creator = (latest["category"], latest["creator_id"]) if latest else (None, None)
        out.append({**r, "event_time": at, "category": category, "creator_id": creator})
    return out


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    session = spark_session(Settings(env="test", home=tmp_path_factory.mktemp("spark")))
    yield session
    session.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A lake with the tricky stream (duplicates partly in a second batch of files)."""
    settings = Settings(env="test", home=tmp_path_factory.mktemp("lake"))
    rows = _stream()
    write_lake(settings.lake_dir, rows)
    write_lake(settings.lake_dir, _dupes(rows), partition=1)
    return settings, _reference_rows(rows + _dupes(rows))


def _collect(df, keys, columns) -> dict[tuple, tuple]:
    out = df.select(*keys, F.unix_micros(TIMESTAMP).alias("_us"), *columns).collect()
    return {(*(r[k] for k in keys), EPOCH + timedelta(microseconds=r["_us"])): tuple(r[c] for c in columns) for r in out}


def _events(spark, settings):
    files = {t: lake_files(settings.lake_dir, t, None, FAR) for t in
             ("item_clicked", "impression_served", "item_engaged", "item_published")}
    return load_events(spark, files, None, FAR, item_versions(spark, files["item_published"], FAR))


def test_streaming_specs_match_the_reference(spark, world):
    settings, rows = world
    events = _events(spark, settings).cache()
    for spec in STREAMING:
        got = _collect(spark_window_counts(events, spec), spec.keys, [spec.name])
        want = window_counts(spec, rows)
        assert {k: v[0] for k, v in got.items()} == want, spec.name
        assert want  # the fixture exercises every spec
    rows_moved = [r for r in rows if r["item_id"] == MOVED_ITEM and r["event_type"] == "item_clicked"]
    assert {r["category"] for r in rows_moved} == {ITEMS[MOVED_ITEM][0], MOVED_TO}  # both versions are used
    clicks_30m = STREAMING[0]
    bounded = _collect(spark_window_counts(events, clicks_30m, T0, T0 + timedelta(hours=1)), clicks_30m.keys, ["uc_clicks_30m"])
    assert {k: v[0] for k, v in bounded.items()} == {
        k: v for k, v in window_counts(clicks_30m, rows).items() if T0 <= k[-1] < T0 + timedelta(hours=1)}
    events.unpersist()


def test_daily_specs_match_the_reference(spark, world):
    settings, rows = world
    events = _events(spark, settings)
    for spec in (DAILY[0], DAILY[8], DAILY[-1]):  # user 1d, uc 30d, creator impressions 7d
        got = _collect(spark_window_counts(events, spec), spec.keys, [spec.name])
        assert {k: v[0] for k, v in got.items()} == window_counts(spec, rows), spec.name


def _read_table(settings: Settings, table: str, day: date) -> pa.Table:
    files = sorted((settings.features_dir / table / f"dt={day.isoformat()}").glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def test_backfill_rows_equal_the_reference_and_derived_columns(spark, world):
    settings, rows = world
    counts = backfill(settings, D0, spark)
    end = T0 + timedelta(days=1)
    for table in DAILY_TABLES:
        t = _read_table(settings, table, D0 + timedelta(days=1))
        assert t.num_rows == counts[table] > 0
        keys = TABLE_KEYS[table]
        assert t.column_names == [*keys, TIMESTAMP, *table_features(table)]
        assert set(t.column(TIMESTAMP).to_pylist()) == {end}
        got = {tuple(r[k] for k in keys): r for r in t.to_pylist()}
        for spec in (s for s in DAILY if s.table == table):
            want = {k[:-1]: v for k, v in window_counts(spec, rows).items() if k[-1] == end}
            assert {k: r[spec.name] for k, r in got.items() if r[spec.name]} == want, spec.name
    item = {r["item_id"]: r for r in _read_table(settings, "item_daily", D0 + timedelta(days=1)).to_pylist()}
    for r in item.values():
        assert r["item_ctr_7d"] == pytest.approx(smoothed_ctr(r["item_clicks_7d"], r["item_impressions_7d"]))
        assert r["item_trending"] == pytest.approx(derived.trending(r["item_clicks_1d"], r["item_clicks_7d"]))
    assert item["i1"]["item_age_days"] == pytest.approx(41.0)
    assert item[LATE_ITEM]["item_age_days"] == pytest.approx(0.5)
    assert item["i99"]["item_age_days"] is None  # never published


def test_point_in_time_no_event_at_or_after_the_row_is_used(spark, tmp_path):
    settings = Settings(env="test", home=tmp_path)
    cut = T0 + timedelta(days=1)
    rows = [_published("i1", T0 - timedelta(days=3)), _published("i2", cut),  # i2: at the cut, not before
            _event("item_clicked", "c1", cut - timedelta(microseconds=1), "u1", "i1"),
            _event("impression_served", "m1", T0, "u1", "i1")]
    future = [_event(t, f"f-{t}", cut, "u1", item) for t in ("item_clicked", "item_engaged", "impression_served")
              for item in ("i1", "i2")]
    write_lake(settings.lake_dir, rows + future)
    misplaced = lake.to_table("item_clicked", [{**future[0], "event_id": "misplaced", "_partition": 9, "_offset": 0}])
    lake.write_atomic(misplaced, lake.hour_dir(settings.lake_dir, "item_clicked", cut - timedelta(hours=1)) / "m.parquet")
    counts = backfill(settings, D0, spark)
    user = _read_table(settings, "user_daily", D0 + timedelta(days=1)).to_pylist()
    assert [(r["user_id"], r["user_clicks_1d"], r["user_engagements_30d"]) for r in user] == [("u1", 1, 0)]
    item = _read_table(settings, "item_daily", D0 + timedelta(days=1)).to_pylist()
    assert [(r["item_id"], r["item_clicks_1d"], r["item_impressions_7d"]) for r in item] == [("i1", 1, 1)]
    creator = _read_table(settings, "creator_daily", D0 + timedelta(days=1)).to_pylist()
    assert [(r["creator_id"], r["creator_items"]) for r in creator] == [(ITEMS["i1"][1], 1)]
    assert counts["user_category_daily"] == 0  # the only engagement is in the future


def _snapshot(root: Path) -> dict[str, tuple[float, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _checksum(settings: Settings, day: date) -> str:
    parts = []
    for table in DAILY_TABLES:
        parts += sorted(repr(sorted(r.items())) for r in _read_table(settings, table, day).to_pylist())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_backfill_is_idempotent_and_touches_only_its_day(spark, world, tmp_path):
    settings = world[0].model_copy(update={"home": tmp_path})
    shutil.copytree(world[0].lake_dir / "raw", settings.lake_dir / "raw")
    backfill_days(settings, D0 - timedelta(days=1), D0 + timedelta(days=1), spark)
    first = _checksum(settings, D0 + timedelta(days=1))
    others = {t: {d: _snapshot(settings.features_dir / t / f"dt={d}") for d in ("2024-03-10", "2024-03-12")}
              for t in DAILY_TABLES}
    stale = settings.features_dir / "item_daily" / "dt=2024-05-01"  # a day that now has no rows
    stale.mkdir(parents=True)
    shutil.copy(next((settings.features_dir / "item_daily" / "dt=2024-03-10").glob("*.parquet")), stale)

    backfill(settings, D0, spark)
    backfill(settings, D0, spark)
    backfill(settings, date(2024, 4, 30), spark)

    assert _checksum(settings, D0 + timedelta(days=1)) == first
    for t in DAILY_TABLES:
        for d, snap in others[t].items():
            assert _snapshot(settings.features_dir / t / f"dt={d}") == snap, (t, d)
    assert not stale.exists()
    leftovers = [p for p in settings.features_dir.rglob("*")
                 if not (p.is_dir() and p.name.startswith("dt=") or p.is_dir() and p.parent == settings.features_dir
                         or p.is_file() and p.name.startswith("part-") and p.suffix == ".parquet")]
    assert leftovers == []
    assert len(list((settings.features_dir / "user_daily" / "dt=2024-03-11").iterdir())) == 1


def test_streaming_backfill_writes_whole_days(spark, world, tmp_path):
    settings = world[0].model_copy(update={"home": tmp_path})
    shutil.copytree(world[0].lake_dir / "raw", settings.lake_dir / "raw")
    counts = streaming_backfill(settings, D0, D0 + timedelta(days=1), spark)
    t = _read_table(settings, "item_session", D0)
    assert t.num_rows == counts["item_session"] > 0
    assert t.column_names == ["item_id", TIMESTAMP, "item_clicks_15m", "item_impressions_15m"]
    with pytest.raises(ValueError, match="midnight"):
        streaming_backfill(settings, T0 + timedelta(hours=1), T0 + timedelta(days=1), spark)


def _bad_lake(world, tmp_path, event_type: str, column: str, array) -> Settings:
    """The world's lake plus one file of `event_type` on D0 whose `column` is replaced by `array`."""
    settings = world[0].model_copy(update={"home": tmp_path})
    shutil.copytree(world[0].lake_dir / "raw", settings.lake_dir / "raw")
    good = [_event(event_type, f"bad-{n}", T0 + timedelta(hours=3, seconds=n), "u1", "i1") for n in range(len(array))]
    table = lake.to_table(event_type, [{**r, "_partition": 9, "_offset": n} for n, r in enumerate(good)])
    table = table.set_column(table.schema.get_field_index(column), column, array)
    lake.write_atomic(table, lake.hour_dir(settings.lake_dir, event_type, T0 + timedelta(hours=3)) / "bad.parquet")
    return settings


def _assert_refused(settings, spark, *words) -> None:
    with pytest.raises(FeatureValidationError) as err:
        backfill(settings, D0, spark)
    for word in words:
        assert word in str(err.value)
    assert not settings.features_dir.exists()  # refused before anything was written


def test_null_spike_is_refused_naming_the_features(spark, world, tmp_path):
    settings = _bad_lake(world, tmp_path, "item_clicked", "user_id", pa.array([None] * 80, pa.string()))
    _assert_refused(settings, spark, "item_clicked.user_id", "null spike", "user_clicks_1d", "user_clicks_30d")


def test_changed_column_types_are_refused_naming_the_features(spark, world, tmp_path):
    times = pa.array([_wire(T0)] * 3, pa.string())
    _assert_refused(_bad_lake(world, tmp_path / "a", "item_engaged", "event_time", times), spark,
                    "item_engaged.event_time", "type changed", "user_engagements_1d", "uc_affinity_30d")
    ids = pa.array([1, 2, 3], pa.int64())
    _assert_refused(_bad_lake(world, tmp_path / "b", "impression_served", "item_id", ids), spark,
                    "impression_served.item_id", "int64", "item_impressions_7d", "item_ctr_7d")
