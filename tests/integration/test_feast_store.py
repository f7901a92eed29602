"""Feast over the feature tables: definitions from specs, the strict as-of join, online == offline,
the fast online reader, and the streaming pusher. Needs only Redis (started here, for this module)."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eightbox.deploy.services import redis as redis_service
from eightbox.deploy.supervisor import Supervisor
from eightbox.features import point_in_time, specs, stream_time
from eightbox.features import store as feature_store
from eightbox.features.online import OnlineReader
from eightbox.features.repo.definitions import FEATURE_SERVICES
from eightbox.features.point_in_time import LABEL_TIME, historical_features
from eightbox.features.pusher import run_pusher
from eightbox.settings import Settings

REDIS_PORT = 27379 + int(os.environ.get("EIGHTBOX_TEST_PORT_OFFSET", "0"))
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SERVICES = ("ranker_v1", "user_history_v1")


@pytest.fixture(scope="module")
def redis_settings(tmp_path_factory):
    settings = Settings(env="test", home=tmp_path_factory.mktemp("feast-redis"), redis_port=REDIS_PORT)
    supervisor = Supervisor(settings, services={"redis": redis_service(settings)})
    supervisor.up(progress=lambda *_: None)
    yield settings
    supervisor.down(progress=lambda *_: None)


@pytest.fixture
def settings(redis_settings, tmp_path) -> Settings:
    """A home (lake, registry) and a Feast project (Redis key namespace) of the test's own."""
    return redis_settings.model_copy(update={"home": tmp_path, "feast_project": f"t{uuid.uuid4().hex[:10]}"})


# --- feature tables written the way the Spark backfill writes them -------------------------------------

def _arrow_type(feature: str):
    if feature == "last_engaged_items":
        return pa.list_(pa.string())
    return pa.float64() if any(feature in cols for cols in specs.DERIVED.values()) else pa.int64()


def write_table(settings: Settings, table: str, rows: list[dict], part: str = "part-00000") -> None:
    """`rows` (keys, event_timestamp, some features; the rest get defaults) → Parquet under
    `<features_dir>/<table>/dt=YYYY-MM-DD/<part>.parquet`."""
    keys, features = specs.TABLE_KEYS[table], specs.table_features(table)
    schema = pa.schema([*(pa.field(k, pa.string()) for k in keys),
                        pa.field(specs.TIMESTAMP, pa.timestamp("us", tz="UTC")),
                        *(pa.field(f, _arrow_type(f)) for f in features)])
    df = pd.DataFrame(rows)
    df[specs.TIMESTAMP] = pd.to_datetime(df[specs.TIMESTAMP], utc=True)
    for f in features:
        if f not in df:
            df[f] = [[] for _ in range(len(df))] if f == "last_engaged_items" else 0
    for day, chunk in df.groupby(df[specs.TIMESTAMP].dt.strftime("%Y-%m-%d")):
        folder = settings.features_dir / table / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(chunk[schema.names].reset_index(drop=True), schema=schema,
                                            preserve_index=False), folder / f"{part}.parquet")


def random_tables(settings: Settings, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Every table, a few rows per entity at different times over three days, random values."""
    rng = np.random.default_rng(seed)
    ids = {"user_id": [f"u{i:03d}" for i in range(12)], "item_id": [f"i{i:03d}" for i in range(40)],
           "category": [f"cat{i}" for i in range(4)], "creator_id": [f"cr{i:02d}" for i in range(8)]}
    frames = {}
    for table, keys in specs.TABLE_KEYS.items():
        combos = pd.MultiIndex.from_product([ids[k] for k in keys], names=list(keys)).to_frame(index=False)
        rows = []
        for _, combo in combos.iterrows():
            for _ in range(int(rng.integers(1, 4))):
                row = dict(combo)
                row[specs.TIMESTAMP] = T0 + timedelta(minutes=int(rng.integers(0, 3 * 24 * 60)))
                for f in specs.table_features(table):
                    if f == "last_engaged_items":
                        row[f] = list(rng.choice(ids["item_id"], size=int(rng.integers(0, 5)), replace=False))
                    elif _arrow_type(f) == pa.float64():
                        row[f] = float(rng.random())
                    else:
                        row[f] = int(rng.integers(0, 1000))
                rows.append(row)
        frame = pd.DataFrame(rows).drop_duplicates([*keys, specs.TIMESTAMP], ignore_index=True)
        write_table(settings, table, frame.to_dict("records"))
        frames[table] = frame
    return frames


def _plain(v):
    """Offline values (numpy scalars, NaN, arrays) and online ones (Python) on one footing."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


# --- (a) the as-of join ----------------------------------------------------------------------------

def test_prior_clicks_are_as_of_label_time_and_no_naive_join_exists(settings):
    # item i1 gets its 1st, 2nd and 3rd click at t1, t2, t3: the feature row at each instant holds the
    # count known from then on; a row for i2 checks that values do not leak across keys.
    t1, t2, t3 = T0 + timedelta(days=1), T0 + timedelta(days=2), T0 + timedelta(days=3)
    write_table(settings, "item_daily", [
        {"item_id": "i1", specs.TIMESTAMP: T0, "item_clicks_7d": 0},
        {"item_id": "i1", specs.TIMESTAMP: t1, "item_clicks_7d": 1},
        {"item_id": "i1", specs.TIMESTAMP: t2, "item_clicks_7d": 2},
        {"item_id": "i1", specs.TIMESTAMP: t3, "item_clicks_7d": 3},
        {"item_id": "i2", specs.TIMESTAMP: T0, "item_clicks_7d": 50},
    ])
    for table in specs.TABLE_KEYS:
        if table != "item_daily":
            write_table(settings, table, [{**{k: "x" for k in specs.TABLE_KEYS[table]}, specs.TIMESTAMP: T0}])
    store = feature_store.apply(settings)

    # Four clicks on i1: at t1 itself (its own click must not count), 6 h later, at t2, at t3.
    labels = [t1, t1 + timedelta(hours=6), t2, t3]
    events = pd.DataFrame({"item_id": "i1", LABEL_TIME: labels, "event": ["a", "b", "c", "d"]})
    shuffled = events.iloc[[2, 0, 3, 1, 2]].reset_index(drop=True)  # any order, and a duplicate row
    got = historical_features(settings, shuffled, ["item_daily:item_clicks_7d"], store=store)
    assert list(got["event"]) == ["c", "a", "d", "b", "c"]  # rows and their other columns kept, in order
    as_of = dict(zip(got["event"], got["item_clicks_7d"]))
    assert [as_of[e] for e in "abcd"] == [0, 1, 1, 2]

    naive = events.merge(pd.DataFrame({"item_id": ["i1"], "item_clicks_7d": [3]}), on="item_id")
    assert list(naive["item_clicks_7d"]) == [3, 3, 3, 3]  # what a join on item_id alone would give
    # Feast's own rule (<=) counts the click being labelled: 1, 1, 2, 3 — hence the 1 ns shift.
    feast_rule = store.get_historical_features(
        entity_df=events.rename(columns={LABEL_TIME: specs.TIMESTAMP}),
        features=["item_daily:item_clicks_7d"]).to_df().sort_values(specs.TIMESTAMP)
    assert list(feast_rule["item_clicks_7d"]) == [1, 1, 2, 3]

    # The module exposes one join, and it cannot be called without a label time.
    public = {n for n in dir(point_in_time) if not n.startswith("_")
              and callable(getattr(point_in_time, n)) and getattr(getattr(point_in_time, n), "__module__", "")
              == point_in_time.__name__}
    assert public == {"historical_features"} and point_in_time.__all__ == ["LABEL_TIME", "historical_features"]
    with pytest.raises(ValueError, match=LABEL_TIME):
        historical_features(settings, events.drop(columns=[LABEL_TIME]), ["item_daily:item_clicks_7d"])
    with pytest.raises(ValueError, match="event_timestamp"):
        historical_features(settings, events.assign(event_timestamp=events[LABEL_TIME]),
                            ["item_daily:item_clicks_7d"])
    with pytest.raises(KeyError, match="item_id"):
        historical_features(settings, events.drop(columns=["item_id"]), ["item_daily:item_clicks_7d"])


# --- (b) online == offline -------------------------------------------------------------------------

SESSION_COUNTS = {s.name for s in specs.STREAMING}


def _stream_at(settings: Settings, at: datetime) -> None:
    """The pusher's clock for every session table (what a stream that reached `at` has written)."""
    import redis

    stream_time.advance(redis.Redis.from_url(settings.redis_address), settings.feast_project,
                        {t: at for t in ("item_session", "user_category_session")})


def test_online_reader_equals_feast_online_and_offline(settings):
    frames = random_tables(settings)
    feature_store.apply(settings)
    latest = max(f[specs.TIMESTAMP].max() for f in frames.values())
    store = feature_store.materialize(settings, T0 - timedelta(days=1), latest.to_pydatetime())
    _stream_at(settings, latest.to_pydatetime())

    rng = np.random.default_rng(3)
    items = list(rng.choice(frames["item_daily"]["item_id"].unique(), size=15, replace=False)) + ["i-unknown"]
    categories = list(rng.choice(frames["user_category_daily"]["category"].unique(), size=len(items)))
    creators = list(rng.choice(frames["creator_daily"]["creator_id"].unique(), size=len(items)))
    for user in ["u001", "u007", "u-unknown"]:
        for service in SERVICES:
            reader = OnlineReader(settings, service, store=store)
            rows = {"user_id": [user] * len(items), "item_id": items, "category": categories, "creator_id": creators}
            feast = store.get_online_features(
                features=store.get_feature_service(service),
                entity_rows=[dict(zip(rows, r)) for r in zip(*rows.values())]).to_dict()
            fast = reader.read(user, items, categories=categories, creators=creators)
            # Feast's online read has no lapse rule: beyond the session counts, the very same answer.
            assert {k: v for k, v in fast.items() if k not in SESSION_COUNTS} == \
                {k: v for k, v in feast.items() if k not in SESSION_COUNTS}

            # Offline, just after the latest timestamp anywhere: the same values.
            entity_df = pd.DataFrame({**rows, LABEL_TIME: latest + pd.Timedelta(1, "us")})
            offline = historical_features(settings, entity_df, service, store=store)
            for name in reader.feature_names:  # session counts included: lapsed ones are 0 on both sides
                assert [_plain(v) for v in offline[name]] == [_plain(v) for v in fast[name]], name
            if user != "u-unknown" and service == "ranker_v1":
                assert all(v is not None for v in fast["user_clicks_7d"] + fast["item_ctr_7d"][:-1])
    assert all(v is None for v in fast["last_engaged_items"])  # the unknown user: nothing, like Feast


def test_a_reader_serves_item_rows_from_its_cache_for_the_interval_user_rows_always_and_sparse_columns(settings):
    views = ["item_session", "user_category_session"]

    def write(day: int, clicks: int) -> datetime:  # one user, item, category; on day `day`: `clicks` each
        t = T0 + timedelta(days=day)
        write_table(settings, views[0], [{"item_id": "i1", specs.TIMESTAMP: t, "item_clicks_15m": clicks},
                                         {"item_id": "i2", specs.TIMESTAMP: t, "item_clicks_15m": 0}], part=f"d{day}")
        write_table(settings, views[1], [{"user_id": "u1", "category": "cat1", specs.TIMESTAMP: t,
                                          "uc_clicks_30m": clicks}], part=f"d{day}")
        return t

    t = write(0, 3)
    feature_store.apply(settings)
    feature_store.materialize(settings, T0 - timedelta(days=1), t, views=views)
    now = [100.0]
    refs = ["item_session:item_clicks_15m", "user_category_session:uc_clicks_30m"]
    reader = OnlineReader(settings, refs, cache_s={"item_id": 1.0}, clock=lambda: now[0])

    def clicks() -> tuple:
        row = reader.read("u1", ["i1", "i1", "i2", "i3"], categories=["cat1"] * 4)
        return row["item_clicks_15m"], row["uc_clicks_30m"][0]

    assert clicks() == ([3, 3, 0, 0], 3)  # i3 never counted: 0, as the offline join gives it
    feature_store.materialize(settings, T0 - timedelta(days=1), write(1, 8), views=views)
    now[0] += 0.9
    assert clicks() == ([3, 3, 0, 0], 8)  # the item rows read 0.9 s ago; the user's always from Redis
    now[0] += 0.1
    assert clicks() == ([8, 8, 0, 0], 8)  # one second old: read again
    assert OnlineReader(settings, refs).read("u1", ["i1"], categories=["cat1"])["item_clicks_15m"] == [8]
    # The board's sparse read: only stored, non-zero values, by position.
    assert reader.read_nonzero("item_id", ["i3", "i2", "i1"], "item_clicks_15m") == {2: 8}
    with pytest.raises(KeyError):
        reader.read_nonzero("user_id", ["u1"], "uc_clicks_30m")  # keyed by user and category, not one key


def test_a_session_count_lapses_two_slides_after_its_window_online_and_offline_alike(settings):
    t = T0 + timedelta(hours=5)
    write_table(settings, "item_session", [
        {"item_id": "i1", specs.TIMESTAMP: t - timedelta(minutes=10), "item_clicks_15m": 5},  # clicked, then nothing
        {"item_id": "i2", specs.TIMESTAMP: t - timedelta(minutes=1), "item_clicks_15m": 4},
        {"item_id": "i3", specs.TIMESTAMP: t, "item_clicks_15m": 2}])
    feature_store.apply(settings)
    store = feature_store.materialize(settings, T0, t, views=["item_session"])
    ref = ["item_session:item_clicks_15m"]
    items = ["i1", "i2", "i3", "i4"]
    reader = OnlineReader(settings, ref, store=store)
    # No stream clock yet: the newest row read stands in for it.
    assert reader.read("u1", items)["item_clicks_15m"] == [0, 4, 2, 0]
    assert reader.read("u1", ["i1"])["item_clicks_15m"] == [5]  # alone, i1's own row is the newest known
    # The stream has reached t + 90 s: i2's window (ended t − 1 min) is 2.5 minutes old, past its two slides.
    _stream_at(settings, t + timedelta(seconds=90))
    reader = OnlineReader(settings, ref, store=store)
    assert reader.read("u1", items)["item_clicks_15m"] == [0, 0, 2, 0]
    assert reader.read_nonzero("item_id", items, "item_clicks_15m") == {2: 2}
    assert store.get_online_features(features=ref, entity_rows=[{"item_id": "i1"}]).to_dict()["item_clicks_15m"] == [5]
    # Offline at the same instant: the same counts (Feast's TTL on the view, then 0).
    offline = historical_features(settings, pd.DataFrame({"item_id": items, LABEL_TIME: t + timedelta(seconds=90)}), ref,
                                  store=store)
    assert offline["item_clicks_15m"].tolist() == [0, 0, 2, 0]


# --- (c) apply -------------------------------------------------------------------------------------

def test_apply_is_idempotent_and_the_yaml_stays_inside_home(settings):
    store = feature_store.apply(settings)
    registry = settings.feast_dir / "registry.db"
    before = registry.read_bytes()
    feature_store.apply(settings)
    assert registry.read_bytes() == before  # nothing changed, nothing written

    assert sorted(fv.name for fv in store.list_feature_views()) == sorted(specs.TABLE_KEYS)
    for table in specs.TABLE_KEYS:
        fv = store.get_feature_view(table)
        assert [f.name for f in fv.features] == specs.table_features(table)
        assert sorted(fv.join_keys) == sorted(specs.TABLE_KEYS[table])
    assert {s.name for s in store.list_feature_services()} == set(FEATURE_SERVICES) >= set(SERVICES)
    assert {s.name for s in store.list_data_sources() if type(s).__name__ == "PushSource"} == {
        "user_category_session_push", "item_session_push", "user_recent_push"}

    text = (settings.feast_dir / "feature_store.yaml").read_text()
    paths = re.findall(r"(?<![\w:/])/[^\s\"',]+", text)
    assert paths, text
    for p in paths:
        assert Path(p).is_relative_to(settings.home) or Path(p).is_relative_to(feature_store.REPO_DIR), p
    assert f"project: {settings.feast_project}" in text and f":{settings.redis_port}," in text


# --- (d) the pusher --------------------------------------------------------------------------------

Record = namedtuple("Record", "offset value")
TP = namedtuple("TP", "topic partition")


class FakeConsumer:
    """kafka-python's consumer, as far as the pusher uses it: one batch per poll."""

    def __init__(self, batches, stop):
        self.batches, self.stop = list(batches), stop
        self.commits, self.seeks, self.closed = 0, [], False

    def poll(self, timeout_ms, max_records):
        if not self.batches:
            self.stop.set()
            return {}
        return self.batches.pop(0)

    def commit(self):
        self.commits += 1

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    def close(self, autocommit=True):
        self.closed = True


def _update(table, keys, ts, values) -> bytes:
    return json.dumps({"table": table, "keys": keys, "event_timestamp": ts.isoformat().replace("+00:00", "Z"),
                       "values": values}).encode()


def test_pusher_makes_updates_readable_online_and_appends_them_offline(settings):
    ids = [{"user_id": "u1", "item_id": "i1", "category": "cat1", "creator_id": "cr1"},
           {"user_id": "u2", "item_id": "i2", "category": "cat2", "creator_id": "cr2"}]
    for table, keys in specs.TABLE_KEYS.items():  # every feature 0 (no history) on day 0
        write_table(settings, table, [{**{k: e[k] for k in keys}, specs.TIMESTAMP: T0} for e in ids])
    feature_store.apply(settings)
    store = feature_store.materialize(settings, T0 - timedelta(days=1), T0 + timedelta(days=1))

    t = T0 + timedelta(days=2, minutes=1)
    tp = TP("eightbox.feature-updates", 0)
    records = [
        _update("item_session", {"item_id": "i1"}, t, {"item_clicks_15m": 3, "item_impressions_15m": 40}),
        _update("item_session", {"item_id": "i2"}, t, {"item_clicks_15m": 1, "item_impressions_15m": 9}),
        _update("user_category_session", {"user_id": "u1", "category": "cat1"}, t, {"uc_clicks_30m": 2}),
        _update("user_recent", {"user_id": "u1"}, t, {"last_engaged_items": ["i2", "i1"]}),
        b"{not json",  # skipped, not fatal
    ]
    stop = threading.Event()
    consumer = FakeConsumer([{tp: [Record(10 + i, r) for i, r in enumerate(records)]}], stop)

    class FailsOnce:  # the first push fails (Redis away): the batch must be rewound, not committed
        failed = False

        def __getattr__(self, name):
            return getattr(store, name)

        def push(self, *args, **kwargs):
            if not FailsOnce.failed:
                FailsOnce.failed = True
                consumer.batches.insert(0, {tp: [Record(10 + i, r) for i, r in enumerate(records)]})
                raise ConnectionError("redis away")
            return store.push(*args, **kwargs)

    pushed = run_pusher(settings, stop, store=FailsOnce(), consumer=consumer, poll_ms=10)
    assert pushed == 4 and consumer.seeks == [(tp, 10)] and consumer.commits == 1 and consumer.closed

    # Online: Feast and the reader both see the pushed values.
    refs = ["item_session:item_clicks_15m", "item_session:item_impressions_15m",
            "user_category_session:uc_clicks_30m", "user_recent:last_engaged_items"]
    reader = OnlineReader(settings, refs, store=store)
    fast = reader.read("u1", ["i1", "i2"], categories=["cat1", "cat1"])
    assert fast["item_clicks_15m"] == [3, 1] and fast["item_impressions_15m"] == [40, 9]
    assert fast["uc_clicks_30m"] == [2, 2] and fast["last_engaged_items"] == [["i2", "i1"]] * 2
    feast = store.get_online_features(features=refs, entity_rows=[
        {"user_id": "u1", "item_id": i, "category": "cat1"} for i in ("i1", "i2")]).to_dict()
    assert feast == fast

    # Offline: appended in the table's layout, one file for the batch (the retry replaced it).
    files = sorted((settings.features_dir / "item_session" / f"dt={t:%Y-%m-%d}").glob("*.parquet"))
    assert [f.name for f in files] == ["push+0+10-14.parquet"]
    assert not list(settings.features_dir.rglob(".*.tmp"))
    entity_df = pd.DataFrame({"user_id": "u1", "item_id": ["i1", "i2"], "category": "cat1",
                              LABEL_TIME: [t, t + timedelta(seconds=1)]})
    offline = historical_features(settings, entity_df, refs, store=store)
    assert offline["item_clicks_15m"].tolist() == [0, 1]  # at t itself, i1's pushed value is not yet known
    assert offline["uc_clicks_30m"].tolist() == [0, 2]
    assert [list(v) for v in offline["last_engaged_items"]] == [[], ["i2", "i1"]]


def test_training_rows_match_a_reference_as_of_join(settings):
    """Many users, items and label times (ties included): every value is the latest row strictly
    before the label time (a session count: 0 once that row is past `specs.current_for`), computed
    independently here with pandas."""
    frames = random_tables(settings, seed=11)
    store = feature_store.apply(settings)
    rng = np.random.default_rng(5)
    n = 120
    users = rng.choice(frames["user_daily"]["user_id"].unique(), size=n)
    items = rng.choice(frames["item_daily"]["item_id"].unique(), size=n)
    cats = rng.choice(frames["user_category_daily"]["category"].unique(), size=n)
    creators = rng.choice(frames["creator_daily"]["creator_id"].unique(), size=n)
    # labels: random instants, and some exactly at a feature row's timestamp (the strictness boundary)
    stamps = frames["item_daily"][specs.TIMESTAMP].sample(n // 3, random_state=1).tolist()
    labels = stamps + [T0 + timedelta(minutes=int(m)) for m in rng.integers(-60, 4 * 24 * 60, n - len(stamps))]
    entity_df = pd.DataFrame({"user_id": users, "item_id": items, "category": cats, "creator_id": creators,
                              LABEL_TIME: pd.to_datetime(labels, utc=True)})
    entity_df.loc[5, ["user_id", LABEL_TIME]] = [entity_df.loc[4, "user_id"], entity_df.loc[4, LABEL_TIME]]
    entity_df.loc[6, ["item_id", LABEL_TIME]] = [entity_df.loc[7, "item_id"], entity_df.loc[7, LABEL_TIME]]
    got = historical_features(settings, entity_df, "ranker_v1", store=store)
    assert len(got) == n

    for table in store.get_feature_service("ranker_v1").feature_view_projections:
        frame, keys = frames[table.name], list(specs.TABLE_KEYS[table.name])
        for i, row in entity_df.iterrows():
            match = frame[(frame[keys] == row[keys]).all(axis=1) & (frame[specs.TIMESTAMP] < row[LABEL_TIME])]
            latest = None if match.empty else match.sort_values(specs.TIMESTAMP).iloc[-1]
            current = specs.current_for(table.name)
            lapsed = current is not None and (latest is None or row[LABEL_TIME] - latest[specs.TIMESTAMP] > current)
            for f in specs.table_features(table.name):
                want = 0 if lapsed else None if latest is None else latest[f]  # a session count lapses to 0
                assert _plain(got.loc[i, f]) == _plain(want), (table.name, f, i)


def test_bench_online_features_quick(settings, capsys):
    from eightbox.features.bench_online import run

    result = run(settings, quick=True)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result and result["mismatches"] == 0 and result["features"] == 28
    assert {"p50_ms", "p99_ms", "feast_p99_ms", "raw_redis_p99_ms", "ratio"} <= set(result)
    # the bench's own project is gone from Redis afterwards
    import redis

    assert not [k for k in redis.Redis.from_url(settings.redis_address).scan_iter(count=1000)
                if k.endswith(f"{settings.feast_project}_bench".encode())]
