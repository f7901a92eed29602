"""The dataset builder end to end on real engines: a small raw lake in the archiver's layout, feature
tables backfilled from it by Spark (local mode), Feast's offline store over them (Parquet; no Redis),
then examples, temporal splits and a versioned dataset. Spark and the lake are built once per module.

Timeline (UTC): items i1..i4 published on Mar 1; traffic every 3 hours on Mar 9 and 10 (history the
features count); the labelled day Mar 11 holds three requests, and the build runs as of Mar 12 00:00
with a 2 h label delay and a 1 h attribution window.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from eightbox.features import specs
from eightbox.features import store as feature_store
from eightbox.features.backfill import backfill_days, streaming_backfill
from eightbox.features.backfill_bench import write_lake
from eightbox.features.repo.definitions import FEATURE_SERVICES, feature_dtype
from eightbox.features.spark_session import spark_session
from eightbox.settings import Settings
from eightbox.training import examples as ex
from eightbox.training.datasets import load_dataset, write_dataset
from eightbox.training.labels import BASE_COLUMNS
from eightbox.training.splits import SPLITS, by_fractions, split

T0 = datetime(2024, 3, 10, tzinfo=timezone.utc)
DAY11 = T0 + timedelta(days=1)
AS_OF, DELAY, WINDOW = T0 + timedelta(days=2), timedelta(hours=2), timedelta(hours=1)
A, B, C = DAY11 + timedelta(hours=10), DAY11 + timedelta(hours=14), DAY11 + timedelta(hours=23)
LATE_ITEM, LATE_AT = "i5", DAY11 + timedelta(hours=12)
ABSURD = 999_999
ITEMS = {f"i{n}": (f"c{n % 2}", f"k{n % 2}") for n in range(1, 6)}  # item -> (category, creator)
MOVED_ITEM, MOVED_AT, MOVED_TO = "i3", DAY11 + timedelta(hours=12), "c-moved"  # re-published between A and B


def category(item: str, at) -> str:
    return MOVED_TO if item == MOVED_ITEM and at >= MOVED_AT else ITEMS[item][0]


def _wire(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rows() -> list[dict]:
    rows = [{"event_type": "item_published", "event_id": f"pub-{i}", "item_id": i, "category": c, "creator_id": k,
             "event_time": _wire(LATE_AT if i == LATE_ITEM else T0 - timedelta(days=9))} for i, (c, k) in ITEMS.items()]
    rows.append({"event_type": "item_published", "event_id": f"pub-{MOVED_ITEM}-v2", "item_id": MOVED_ITEM,
                 "category": MOVED_TO, "creator_id": ITEMS[MOVED_ITEM][1], "event_time": _wire(MOVED_AT)})

    def imp(eid, at, user, item, request, position=0, features=None):
        rows.append({"event_type": "impression_served", "event_id": eid, "event_time": _wire(at), "user_id": user,
                     "item_id": item, "request_id": request, "position": position, "surface": "home",
                     "model_versions": {"ranker": "7"}, "features": features or {}})

    def act(event_type, eid, at, user, item, request, **extra):
        rows.append({"event_type": event_type, "event_id": eid, "event_time": _wire(at), "user_id": user,
                     "item_id": item, "request_id": request, **extra})

    for h in range(0, 48, 3):  # history: Mar 9 and Mar 10
        at, user, item = T0 - timedelta(days=1) + timedelta(hours=h), f"u{(h // 3) % 3}", f"i{1 + h % 4}"
        imp(f"h-imp-{h}", at, user, item, f"h-{h}")
        if h % 2 == 0:
            act("item_clicked", f"h-clk-{h}", at + timedelta(minutes=2), user, item, f"h-{h}")
        if h % 4 == 0:
            act("item_engaged", f"h-eng-{h}", at + timedelta(minutes=10), user, item, f"h-{h}", kind="like", value=2.0)
    # Request A: u1 sees i1 and i2; i1 is clicked and engaged, i2 clicked after the window closed.
    imp("a-i1", A, "u1", "i1", "r-a", 0, {"item_clicks_7d": 3.0, "user_clicks_1d": 1.0})
    imp("a-i2", A, "u1", "i2", "r-a", 1, {"item_clicks_7d": 7.0})
    act("item_clicked", "a-clk-i1", A + timedelta(minutes=5), "u1", "i1", "r-a")
    act("item_engaged", "a-eng-i1", A + timedelta(minutes=20), "u1", "i1", "r-a", kind="like", value=4.0)
    act("item_clicked", "a-clk-i2", A + WINDOW + timedelta(minutes=30), "u1", "i2", "r-a")
    # Request B: u2 sees i3 and i1; the click on i3 carries no request id.
    imp("b-i3", B, "u2", "i3", "r-b", 0, {"item_clicks_7d": 2.0})
    imp("b-i1", B, "u2", "i1", "r-b", 1, {"item_clicks_7d": 4.0})
    act("item_clicked", "b-clk-i3", B + timedelta(minutes=30), "u2", "i3", None)
    # Request C: after the label-delay cut (22:00); it logged an absurd value and was clicked.
    imp("c-i1", C, "u1", "i1", "r-c", 0, {"item_clicks_7d": float(ABSURD)})
    act("item_clicked", "c-clk-i1", C + timedelta(minutes=10), "u1", "i1", "r-c")
    return rows


def _plant(settings: Settings, table: str, keys: dict, at: datetime) -> None:
    """A feature row stamped at or after a label time, with an absurd value in every feature."""
    row = {**keys, specs.TIMESTAMP: at}
    for f in specs.table_features(table):
        row[f] = float(ABSURD) if str(feature_dtype(f)) == "Float64" else ABSURD
    feature_store.write_offline(settings, table, pd.DataFrame([row]), f"planted-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    settings = Settings(env="test", home=tmp_path_factory.mktemp("training-data"),
                        feast_project=f"t{uuid.uuid4().hex[:10]}")
    write_lake(settings.lake_dir, _rows())
    spark = spark_session(settings)
    try:
        backfill_days(settings, date(2024, 3, 9), date(2024, 3, 11), spark)  # rows at Mar 10, 11 and 12 00:00
        streaming_backfill(settings, date(2024, 3, 9), date(2024, 3, 12), spark)  # minute windows
    finally:
        spark.stop()
    # Each planted row is stamped at or after the time of every example that has its key: exactly at
    # the latest such example (not strictly before it), after the others.
    _plant(settings, "item_daily", {"item_id": "i1"}, B)  # b-i1 is at B; a-i1 earlier
    _plant(settings, "item_session", {"item_id": "i1"}, B)
    _plant(settings, "creator_daily", {"creator_id": "k1"}, B)  # k1: i1, i3
    _plant(settings, "user_daily", {"user_id": "u2"}, B)
    _plant(settings, "user_daily", {"user_id": "u1"}, A + timedelta(minutes=20))  # u1's engagement a-eng-i1
    _plant(settings, "item_daily", {"item_id": "i2"}, C)  # after everything kept
    store = feature_store.apply(settings)
    return settings, store


@pytest.fixture(scope="module")
def logged(world):
    return ex.from_logged_impressions(world[0].lake_dir, as_of=AS_OF, label_delay=DELAY, attribution_window=WINDOW)


@pytest.fixture(scope="module")
def joined(world, logged):
    settings, store = world
    labelled = logged[list(BASE_COLUMNS)]
    return ex.from_events_point_in_time(settings, labelled, "ranker_v1", store=store)


def _reference(settings: Settings, rows: pd.DataFrame) -> pd.DataFrame:
    """Per row and ranker_v1 feature: the value of the latest table row with event_timestamp < the
    row's event_time (computed here with pandas, straight from the Parquet tables); for a session
    count, 0 when that row is older than `specs.current_for` or absent."""
    out = rows[["example_id"]].copy()
    for table in FEATURE_SERVICES["ranker_v1"]:
        keys, names = list(specs.TABLE_KEYS[table]), specs.table_features(table)
        data = ds.dataset(str(settings.features_dir / table), format="parquet", partitioning="hive").to_table(
            columns=[*keys, specs.TIMESTAMP, *names]).to_pandas()
        values = []
        for _, r in rows.iterrows():
            item = ITEMS[r["item_id"]]
            key = {"user_id": r["user_id"], "item_id": r["item_id"], "category": category(r["item_id"], r["event_time"]),
                   "creator_id": item[1]}
            hit = data[(data[specs.TIMESTAMP] < r["event_time"])]
            for k in keys:
                hit = hit[hit[k] == key[k]]
            row = hit.sort_values(specs.TIMESTAMP).iloc[-1] if len(hit) else None
            current = specs.current_for(table)
            if current is not None and (row is None or r["event_time"] - row[specs.TIMESTAMP] > current):
                values.append(pd.Series(0.0, index=names))
            else:
                values.append(row[names] if row is not None else pd.Series(index=names))
        out[names] = pd.DataFrame(values, index=out.index)[names].astype("float64").to_numpy()
    return out


def test_a_planted_future_feature_row_never_reaches_a_training_row(world, joined):
    settings, _ = world
    features = ex.service_features("ranker_v1")
    assert list(joined.loc[joined["event_time"] >= DAY11, "example_id"]) == ["a-i1", "a-i2", "b-i1", "b-i3"]
    assert not (joined[features] >= ABSURD).any().any()  # planted at or after each label time
    # Every value is the latest strictly before the impression: the backfill's Mar 12 rows (which count
    # these very clicks) and the minute windows closing after 10:00 are not used either.
    expected = _reference(settings, joined)
    pd.testing.assert_frame_equal(joined[features].reset_index(drop=True),
                                  expected[features].reset_index(drop=True), check_names=False)
    rows = joined.set_index("example_id")
    # i1's Mar 11 00:00 row counts its four history clicks; A's own click (10:05) counts only in the
    # Mar 12 00:00 row, so b-i1 (14:00) still sees 4.
    assert rows.loc["a-i1", "item_clicks_7d"] == rows.loc["b-i1", "item_clicks_7d"] == 4
    assert rows.loc["a-i1", features].notna().sum() > len(features) // 2  # the join found real rows
    # i3 moved to another category at 12:00: b-i3 (14:00) is keyed on the new one, which has no history
    # yet (a count of 0), not on u2's clicks in the old one.
    assert rows.loc["b-i3", "uc_clicks_30m"] == 0
    session = ds.dataset(str(settings.features_dir / "user_category_session"), partitioning="hive").to_table().to_pandas()
    old = session[(session["user_id"] == "u2") & (session["category"] == ITEMS[MOVED_ITEM][0])]
    assert (old[specs.TIMESTAMP] < B).any()


def test_the_label_delay_cutoff_and_the_attribution_window_hold_on_lake_events(logged):
    rows = logged.set_index("example_id")
    assert "c-i1" not in rows.index  # shown at 23:00, after as_of - label_delay: its label is not final
    day11 = rows[rows["event_time"] >= DAY11]
    assert day11["click"].to_dict() == {"a-i1": 1, "a-i2": 0, "b-i1": 0, "b-i3": 1}  # a-i2: clicked too late
    assert (rows.loc["a-i1", "engaged"], rows.loc["a-i1", "value"]) == (1, 4.0)
    history = rows[rows.index.str.startswith("h-")]
    assert len(history) == 16 and history["click"].sum() == 8  # every other history impression was clicked
    assert rows["event_time"].max() <= AS_OF - DELAY


def test_logged_features_are_each_impressions_own_and_both_builders_give_the_same_columns(logged, joined):
    assert list(logged.columns) == list(joined.columns) == [*BASE_COLUMNS, *ex.service_features("ranker_v1")]
    assert (logged.dtypes == joined.dtypes).all()
    rows = logged.set_index("example_id")
    assert rows.loc["a-i1", "item_clicks_7d"] == 3.0 and rows.loc["a-i2", "item_clicks_7d"] == 7.0
    assert np.isnan(rows.loc["a-i2", "user_clicks_1d"])  # a-i1 logged it; a-i2 did not
    assert not (logged[ex.service_features("ranker_v1")] >= ABSURD).any().any()  # c-i1's log is cut


def test_interactions_get_seeded_negatives_published_before_them_and_point_in_time_features(world):
    settings, store = world
    got = ex.from_events_point_in_time(settings, settings.lake_dir, "ranker_v1", as_of=AS_OF, store=store,
                                       negatives_per_positive=3, seed=11)
    positives, negatives = got[got["engaged"] == 1], got[got["engaged"] == 0]
    assert set(positives["example_id"]) == {f"h-eng-{h}" for h in range(0, 48, 12)} | {"a-eng-i1"}
    assert len(negatives) == 3 * len(positives) and (negatives["click"] == 0).all()
    for _, n in negatives.iterrows():
        pos = positives.set_index("example_id").loc[n["example_id"].split("~")[0]]
        assert n["user_id"] == pos["user_id"] and n["item_id"] != pos["item_id"] and n["event_time"] == pos["event_time"]
    assert LATE_ITEM not in set(negatives.loc[negatives["event_time"] <= LATE_AT, "item_id"])
    assert not (got[ex.service_features("ranker_v1")] >= ABSURD).any().any()
    pd.testing.assert_frame_equal(got[ex.service_features("ranker_v1")].reset_index(drop=True),
                                  _reference(settings, got)[ex.service_features("ranker_v1")].reset_index(drop=True),
                                  check_names=False)
    again = ex.sample_negatives(positives.sample(frac=1.0, random_state=2), ex.lake_events(settings.lake_dir, "item_published"), 3, 11)
    assert sorted(map(tuple, again[["example_id", "item_id"]].to_numpy())) == \
        sorted(map(tuple, negatives[["example_id", "item_id"]].to_numpy()))  # seeded: input order does not matter


def test_a_dataset_from_the_lake_splits_forward_in_time_and_round_trips_with_its_hash(world, logged):
    settings, _ = world
    windows = by_fractions(logged["event_time"], (0.5, 0.25, 0.25), gap=WINDOW)
    parts = split(logged, windows)
    assert parts["train"]["event_time"].max() + WINDOW <= parts["valid"]["event_time"].min()
    assert parts["valid"]["event_time"].max() < parts["test"]["event_time"].min()
    path = write_dataset(parts, "ranker-clicks", settings=settings, windows=windows, feature_service="ranker_v1",
                         label_delay=DELAY, attribution_window=WINDOW, source=str(settings.lake_dir))
    assert path.parent == settings.data_dir / "datasets" / "ranker-clicks"
    loaded = load_dataset(path)
    assert loaded.manifest["rows"] == {s: len(parts[s]) for s in SPLITS}
    assert write_dataset(parts, "ranker-clicks", settings=settings, windows=windows, feature_service="ranker_v1",
                         label_delay=DELAY, attribution_window=WINDOW, source=str(settings.lake_dir)) == path


def test_ranker_v2_reads_a_published_item_without_daily_features_as_counted_at_zero(world):
    """Negatives on Mar 9 come before any item_daily row (the first is stamped Mar 10 00:00): ranker_v1
    leaves their item features missing, ranker_v2 gives zero counts and the age since the item's first
    publication (i3's second version does not reset it). Every other value is the same."""
    settings, store = world
    kw = dict(as_of=AS_OF, store=store, negatives_per_positive=3, seed=11)
    v1 = ex.from_events_point_in_time(settings, settings.lake_dir, "ranker_v1", **kw)
    v2 = ex.from_events_point_in_time(settings, settings.lake_dir, "ranker_v2", **kw)
    daily = specs.table_features("item_daily")
    unseen = v1[daily].isna().all(axis=1)
    assert unseen.any() and (~unseen).any()
    assert (v2.loc[unseen, "item_impressions_7d"] == 0).all() and (v2.loc[unseen, "item_clicks_1d"] == 0).all()
    assert (v2.loc[unseen, "item_ctr_7d"] == specs.smoothed_ctr(0, 0)).all()
    first_published = T0 - timedelta(days=9)
    np.testing.assert_allclose(v2.loc[unseen, "item_age_days"],
                               (v2.loc[unseen, "event_time"] - first_published) / timedelta(days=1))
    pd.testing.assert_frame_equal(v1.loc[~unseen], v2.loc[~unseen])
    others = [c for c in v1.columns if c not in daily]
    pd.testing.assert_frame_equal(v1[others], v2[others])
