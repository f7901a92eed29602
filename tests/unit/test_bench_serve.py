"""The serving bench's pure parts: its world's shapes and determinism, and which rate it reports."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from eightbox.features import specs
from eightbox.serving import bench_serve
from eightbox.serving.bench_world import END, WorldParams, features, interactions, ranker_examples, simulate
from eightbox.settings import Settings

SMALL = WorldParams(n_items=1_500, n_users=400, n_categories=6, n_creators=40, visits=3_000)


@pytest.fixture(scope="module")
def sim():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def tables(sim):
    return features(sim)


def test_same_params_simulate_the_same_world_and_another_seed_another(sim):
    again = simulate(SMALL)
    pd.testing.assert_frame_equal(sim.impressions, again.impressions)
    pd.testing.assert_frame_equal(sim.engagements, again.engagements)
    other = simulate(WorldParams(**{**SMALL.__dict__, "seed": 1}))
    assert not sim.impressions["item_id"].equals(other.impressions["item_id"])


def test_world_key_follows_every_param():
    assert SMALL.key() == WorldParams(**SMALL.__dict__).key()
    assert SMALL.key() != WorldParams(**{**SMALL.__dict__, "tower_epochs": 3}).key()


def test_catalog_size_scales_the_world_down_but_never_below_a_floor():
    assert WorldParams.for_catalog(100_000) == WorldParams()
    small = WorldParams.for_catalog(10_000)
    assert (small.n_items, small.n_users, small.n_creators, small.visits) == (10_000, 2_000, 200, 6_000)
    assert WorldParams.for_catalog(1_000).n_users == 1_000
    with pytest.raises(ValueError, match="at least 1,000 items"):
        WorldParams.for_catalog(999)


def test_traffic_has_the_catalog_the_slates_and_labels_in_order(sim):
    assert len(sim.items) == SMALL.n_items and sim.items["item_id"].is_unique
    assert len(sim.impressions) == SMALL.visits * SMALL.slate
    assert set(sim.impressions["position"]) == set(range(SMALL.slate))
    assert set(sim.impressions["item_id"]) <= set(sim.items["item_id"])
    imp = sim.impressions
    assert (imp["engaged"] <= imp["click"]).all() and 0 < imp["click"].mean() < 0.5
    assert len(sim.engagements) == imp["engaged"].sum()
    assert (sim.engagements["event_time"] < END).all()
    assert (imp["event_time"] >= END - timedelta(days=SMALL.days)).all()
    inter = interactions(sim)
    assert inter["event_time"].is_monotonic_increasing
    assert inter["kind"].value_counts().to_dict() == {"click": imp["click"].sum(), "engage": imp["engaged"].sum()}


def test_every_feature_table_has_its_columns_and_counts_what_its_window_holds(sim, tables):
    assert set(tables) == set(specs.TABLE_KEYS)
    for table, frame in tables.items():
        assert list(frame.columns) == [*specs.TABLE_KEYS[table], specs.TIMESTAMP, *specs.table_features(table)]
        assert (frame[specs.TIMESTAMP] == END).all()
        assert not frame.duplicated(list(specs.TABLE_KEYS[table])).any()
    item = tables["item_daily"]
    assert len(item) == SMALL.n_items  # every item online, even unseen ones (zero counts)
    week = sim.impressions[sim.impressions["event_time"] >= END - timedelta(days=7)]
    assert item["item_clicks_7d"].sum() == week["click"].sum()
    assert item["item_impressions_7d"].sum() == len(week)
    unseen = item[item["item_impressions_7d"] == 0]
    assert (unseen["item_ctr_7d"] == specs.smoothed_ctr(0, 0)).all()
    assert tables["creator_daily"]["creator_items"].sum() == SMALL.n_items


def test_last_engaged_items_are_the_newest_engagements_first(sim, tables):
    recent = tables["user_recent"].set_index("user_id")["last_engaged_items"]
    user = sim.engagements["user_id"].value_counts().index[0]
    mine = sim.engagements[sim.engagements["user_id"] == user].sort_values("event_time", ascending=False)
    assert recent[user] == mine["item_id"].tolist()[: specs.LAST_N_ENGAGED]


def test_ranker_examples_carry_every_feature_and_validate_on_later_impressions(sim, tables):
    from eightbox.training.examples import service_features

    names = service_features("ranker_v1")
    train, valid = ranker_examples(sim, tables, names, max_rows=10_000)
    assert len(train) + len(valid) == 10_000 and len(valid) == 2_000
    assert train["event_time"].max() <= valid["event_time"].min()
    assert set(names) <= set(train.columns) and train[names].dtypes.eq("float64").all()
    assert train["item_age_days"].notna().all()  # every item has a daily row


def _rate(rps: int, p99: float | None, errors: int = 0, degraded: int = 0) -> dict:
    return {"rps": rps, "requests": rps * 15, "p50_ms": p99, "p95_ms": p99, "p99_ms": p99, "errors": errors,
            "floor_p99_ms": 2.0, "stages": {"rank": 1.0}, "max_send_lag_ms": 0.1, "load_1m": 1.0,
            "rungs": {"full": rps * 15 - errors - degraded, "fallback": degraded}}


def test_the_highest_rate_within_the_budget_is_reported():
    out = bench_serve.summarize([_rate(25, 20.0), _rate(50, 40.0), _rate(100, 90.0), _rate(200, 300.0)])
    assert (out["rps"], out["p99_ms"], out["met_budget"], out["met_aim"]) == (100, 90.0, True, False)
    assert out["ratio"] == 45.0 and out["stages"] == {"rank": 1.0}
    assert [r["rps"] for r in out["rates"]] == [25, 50, 100, 200]


def test_a_rate_with_errors_does_not_meet_the_budget_however_fast():
    out = bench_serve.summarize([_rate(25, 20.0), _rate(50, 10.0, errors=1)])
    assert (out["rps"], out["met_budget"], out["met_aim"]) == (25, True, True)


def test_a_fast_rate_answered_from_lower_rungs_does_not_meet_the_budget():
    out = bench_serve.summarize([_rate(25, 20.0, degraded=3), _rate(50, 30.0, degraded=8)])
    assert (out["rps"], out["full_share"], out["met_budget"]) == (25, 0.992, True)
    assert bench_serve.summarize([_rate(25, 20.0, degraded=4)])["met_budget"] is False


def test_when_no_rate_meets_the_budget_the_lowest_is_reported_as_missed():
    out = bench_serve.summarize([_rate(50, 150.0), _rate(25, 120.0), _rate(100, None, errors=500)])
    assert (out["rps"], out["met_budget"], out["met_aim"]) == (25, False, False)


def test_a_rate_far_past_saturation_stops_the_climb():
    assert not bench_serve.overloaded(_rate(100, 900.0, errors=700))
    assert bench_serve.overloaded(_rate(100, 1001.0))
    assert bench_serve.overloaded(_rate(100, 50.0, errors=751))
    assert bench_serve.overloaded(_rate(100, None, errors=1500))


def test_the_bench_stack_lives_under_its_own_home_on_shifted_ports_with_a_model_per_world():
    base = Settings(home=Path("/tmp/eightbox-x"))
    bench = bench_serve.bench_settings(base, SMALL.key())
    assert bench.home == Path("/tmp/eightbox-x/bench/serve")
    assert bench.serving_model_name == f"eightbox-bench-{SMALL.key()}" != base.serving_model_name
    for port in ("kafka_port", "kafka_controller_port", "redis_port", "mlflow_port", "serving_port"):
        assert getattr(bench, port) == getattr(base, port) + bench_serve.PORT_SHIFT
