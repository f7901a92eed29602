"""Data-layer checks against a training reference: a planted null spike, planted schema changes,
out-of-range values and unseen categories each raise an alert naming the column; clean data none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eightbox.monitoring.data_checks import data_checks, kind_of, schema_checks
from eightbox.monitoring.thresholds import ACT, DEFAULTS, STABLE
from eightbox.training.reference import training_reference

FEATURES = ["item_ctr_7d", "uc_clicks_30m", "user_engagements_7d"]


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "item_ctr_7d": rng.beta(2, 30, rows),
        "uc_clicks_30m": rng.poisson(1.5, rows).astype(float),
        "user_engagements_7d": rng.gamma(2.0, 3.0, rows),
        "category": rng.choice(["books", "music", "film"], rows, p=[0.5, 0.3, 0.2]),
    })


@pytest.fixture(scope="module")
def reference() -> dict:
    train = frame(20_000, seed=1)
    return training_reference(train, FEATURES, {"p_click": train["item_ctr_7d"].to_numpy()})


def alerts(checks) -> list[tuple[str, str]]:
    return [(c.check, c.subject) for c in checks if c.status == ACT]


def test_live_data_like_training_raises_no_alert(reference):
    checks = data_checks(reference, frame(5000, seed=2), DEFAULTS)
    assert alerts(checks) == []
    assert {c.subject for c in checks if c.check == "psi"} == set(FEATURES)
    assert all(c.status == STABLE for c in checks if c.check == "psi")


def test_a_planted_null_spike_in_one_feature_raises_a_data_alert_naming_it(reference):
    live = frame(5000, seed=3)
    live.loc[live.sample(frac=0.3, random_state=0).index, "uc_clicks_30m"] = np.nan
    checks = data_checks(reference, live, DEFAULTS)
    assert alerts(checks) == [("null_rate_increase", "uc_clicks_30m")]
    spike = next(c for c in checks if c.status == ACT)
    assert spike.layer == "data" and spike.value == pytest.approx(0.3, abs=0.01)
    assert "uc_clicks_30m" in spike.alert and "30.0% live" in spike.alert


@pytest.mark.parametrize("change, expected", [
    (lambda df: df.drop(columns=["item_ctr_7d"]), ("item_ctr_7d", "missing")),
    (lambda df: df.rename(columns={"item_ctr_7d": "item_ctr_7day"}), ("item_ctr_7day", "new")),
    (lambda df: df.assign(user_engagements_7d=df["user_engagements_7d"].map(lambda v: f"{v:.1f}")),
     ("user_engagements_7d", "type changed")),
    (lambda df: df.assign(category=np.arange(len(df)) % 3), ("category", "type changed")),
])
def test_a_planted_upstream_schema_change_is_caught(reference, change, expected):
    checks = data_checks(reference, change(frame(2000, seed=4)), DEFAULTS)
    schema = [c for c in checks if c.check == "schema"]
    assert any(c.subject == expected[0] and expected[1] in c.detail and c.status == ACT for c in schema), schema
    # A broken column gets no other checks (its numbers would be meaningless).
    assert not [c for c in checks if c.check != "schema" and c.subject == expected[0]]


def test_a_renamed_feature_is_reported_both_as_missing_and_as_new(reference):
    live = frame(1000, seed=5).rename(columns={"uc_clicks_30m": "uc_clicks_30min"})
    found = {(c.subject, c.detail.split(":")[0]) for c in schema_checks(reference, live)}
    assert found == {("uc_clicks_30m", "missing"), ("uc_clicks_30min", "new")}


def test_out_of_range_values_and_unseen_categories_are_alerts(reference):
    live = frame(4000, seed=6)
    live.loc[:499, "item_ctr_7d"] = 5.0  # a CTR above 1: an upstream bug
    live.loc[:799, "category"] = "podcasts"
    got = alerts(data_checks(reference, live, DEFAULTS))
    assert sorted(got) == [("out_of_range", "item_ctr_7d"), ("unseen_category", "category")]


def test_kind_of_tells_numbers_from_strings():
    assert kind_of(pd.Series([1.0, np.nan])) == "numeric"
    assert kind_of(pd.Series([1, 2.5, None], dtype=object)) == "numeric"
    assert kind_of(pd.Series(["1.0", "2"], dtype=object)) == "categorical"
