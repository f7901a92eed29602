"""Concept drift (`monitoring.concept_checks`): the taste lift, its position adjustment, and the
check on the simulator's own taste drift (no services: the simulator is pure Python)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from eightbox.ingest.schema import ImpressionServed, ItemClicked, ItemPublished
from eightbox.ingest.simulator import Marketplace, SimConfig, popularity_policy
from eightbox.monitoring.concept_checks import CHECK, MIN_ROWS, concept_checks, taste_lift
from eightbox.monitoring.thresholds import ACT, NO_DATA, STABLE, thresholds

TASTE = "uc_affinity_30d"
THRESHOLD = thresholds()["concept_drift"]


def test_the_lift_compares_click_rates_with_and_without_the_taste():
    # 1,000 rows each side at one position: 20 % clicks where the taste is known, 10 % elsewhere.
    click = np.r_[np.arange(1000) < 200, np.arange(1000) < 100].astype(int)
    taste = np.r_[np.full(1000, 0.4), np.full(1000, np.nan)]
    lift, known, rest = taste_lift(click, np.zeros(2000, int), taste)
    assert (known, rest) == (1000, 1000) and lift == pytest.approx(2.0)


def test_the_lift_is_adjusted_for_the_slots_familiar_items_are_shown_in():
    # Clicks depend on the slot only (50 % on top, 5 % below), and a ranker puts every familiar
    # item on top: the raw click rates differ tenfold, the taste explains nothing.
    rng = np.random.default_rng(0)
    position = np.r_[np.zeros(1000, int), np.ones(4000, int)]
    click = (rng.random(5000) < np.where(position == 0, 0.5, 0.05)).astype(int)
    taste = np.r_[np.full(1000, 0.3), rng.choice([0.0, 0.3], 4000, p=[0.9, 0.1])]
    raw = click[taste > 0].mean() / click[taste == 0].mean()
    lift, _, _ = taste_lift(click, position, taste)
    assert raw > 3 and lift == pytest.approx(1.0, abs=0.2)


def test_too_few_rows_on_either_side_is_no_data():
    click = np.ones(MIN_ROWS + 50, int)
    taste = np.r_[np.full(MIN_ROWS - 1, 0.5), np.zeros(51)]
    assert np.isnan(taste_lift(click, np.zeros(len(click), int), taste)[0])
    frame = pd.DataFrame({"click": click, "position": 0, TASTE: taste})
    [check] = concept_checks(frame, frame, THRESHOLD)
    assert check.status == NO_DATA and check.check == CHECK and check.subject == TASTE


def test_a_champion_without_the_taste_feature_gets_no_check():
    frame = pd.DataFrame({"click": [0, 1], "position": [0, 1]})
    assert concept_checks(frame, frame, THRESHOLD) == []


def _day(events: list, history: list[list]) -> pd.DataFrame:
    """One row per impression of `events`: clicked, position, and the user's share of clicks in the
    item's category over `history` (the taste a feature pipeline would have computed)."""
    category = {e.item_id: e.category for day in [*history, events] for e in day if isinstance(e, ItemPublished)}
    past = pd.DataFrame([(e.user_id, category[e.item_id]) for day in history for e in day
                         if isinstance(e, ItemClicked)], columns=["user", "category"])
    share = past.groupby(["user", "category"]).size() / past.groupby("user").size()
    clicked = {(e.request_id, e.item_id) for e in events if isinstance(e, ItemClicked)}
    shown = [e for e in events if isinstance(e, ImpressionServed)]
    keys = pd.MultiIndex.from_arrays([[e.user_id for e in shown], [category[e.item_id] for e in shown]])
    return pd.DataFrame({"click": [int((e.request_id, e.item_id) in clicked) for e in shown],
                         "position": [e.position for e in shown], TASTE: share.reindex(keys).to_numpy()})


@pytest.mark.parametrize("drift", [False, True])
def test_the_simulators_taste_drift_is_concept_drift_and_the_same_world_without_it_is_stable(drift):
    # One popularity policy throughout, so only the users change; the worlds differ only in the drift
    # (same users, items and visits), which starts with the third day.
    world = SimConfig(seed=7, n_users=600, n_items=300, n_creators=30, sessions_per_hour=150.0,
                      new_users_per_hour=0.0, new_items_per_hour=0.0)
    if drift:
        world = replace(world, drift_at=world.start + timedelta(days=2), drift_strength=1.0)
    market = Marketplace(world)
    policy = popularity_policy(market)
    first = market.bootstrap_events() + list(market.simulate(24, policy))
    second, third = (list(market.simulate(24, policy)) for _ in range(2))
    [check] = concept_checks(_day(third, [first, second]), _day(second, [first]), THRESHOLD)
    assert check.status == (ACT if drift else STABLE), check.alert
