"""Behaviour tests of the multi-task ranker: learning a known model, directional and invariance
checks, persistence, filters, the value formula and calibration on simulated traffic.

Models train with nthread=1: the unit tiers share two cores, and OpenMP threads that wait on each
other on a busy machine make nthread=2 several times slower there (results are the same).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from eightbox.ingest.schema import ImpressionServed, ItemClicked, ItemEngaged, ItemPublished
from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.ranking.calibration import expected_calibration_error
from eightbox.ranking.filters import drop_engaged
from eightbox.ranking.multitask import MultiTaskRanker
from eightbox.ranking.value import ValueWeights, value_score

FEATURES = ["relevance", "quality", "freshness", "noise"]
MONOTONE = {"relevance": 1, "position": -1}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def logged_impressions(n: int = 40_000, seed: int = 0) -> pd.DataFrame:
    """Impressions in time order from a known model: logit P(click) = -1.5 + 1.5 relevance
    + 0.5 quality - 0.5 freshness - 0.8 log(1 + position); `noise` is unrelated; 10% of quality is NaN."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"hour": np.sort(rng.uniform(0, 24, n)), "relevance": rng.normal(size=n),
                       "quality": rng.normal(size=n), "freshness": rng.uniform(0, 1, n),
                       "noise": rng.normal(size=n), "position": rng.integers(0, 10, n)})
    base = -1.5 + 1.5 * df.relevance + 0.5 * df.quality - 0.5 * df.freshness
    df["p_true"] = sigmoid(base - 0.8 * np.log1p(df.position))
    df["p_true_top"] = sigmoid(base)  # the same impression had it been shown at position 0
    df["click"] = (rng.random(n) < df.p_true).astype(float)
    df["engaged"] = df.click * (rng.random(n) < sigmoid(-0.3 + df.relevance))
    df["value"] = df.engaged * np.clip(0.4 + 0.2 * df.relevance + 0.1 * rng.normal(size=n), 0.01, 1.0)
    df.loc[rng.random(n) < 0.1, "quality"] = np.nan
    return df


def by_time(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train on hours [0, 14), validate on [14, 19), test on [19, 24): the test window is later."""
    return df[df.hour < 14], df[(df.hour >= 14) & (df.hour < 19)], df[df.hour >= 19]


@pytest.fixture(scope="module")
def data():
    return by_time(logged_impressions())


@pytest.fixture(scope="module")
def ranker(data):
    train, valid, _ = data
    return MultiTaskRanker(seed=0, nthread=1).fit(train, valid, FEATURES, monotone=MONOTONE)


# --- learning -------------------------------------------------------------------------------


def test_a_known_logistic_model_with_position_bias_is_learned_and_calibrated_on_a_later_window(ranker, data):
    test = data[2]
    m = ranker.metrics(test)
    best_auc = m["click"]["auc"]
    from sklearn.metrics import roc_auc_score

    assert best_auc > 0.75 and best_auc > roc_auc_score(test.click, test.p_true) - 0.01
    assert m["click"]["ece"] <= 0.02 and m["engaged"]["ece"] <= 0.02
    assert set(ranker.heads) == {"click", "engaged", "value"}
    # Served at position 0, p_click estimates the position-0 probability, not the logged average.
    served = ranker.predict(test)["p_click"]
    assert abs(served.mean() - test.p_true_top.mean()) < 0.015
    assert served.mean() > test.click.mean() + 0.05


def test_metrics_report_auc_log_loss_and_ece_per_head_before_and_after_calibration(ranker, data):
    m = ranker.metrics(data[2])
    for head in ("click", "engaged"):
        assert {"auc", "auc_raw", "logloss", "logloss_raw", "ece", "ece_raw"} <= set(m[head])
        assert m[head]["method"] in ("isotonic", "platt")
    assert {"rmse", "rmse_raw", "pred_mean"} <= set(m["value"])


# --- directional and invariance -------------------------------------------------------------


def test_raising_a_relevance_feature_never_lowers_any_head_or_the_value_score(ranker, data):
    rows = data[2].iloc[:300]
    grid = np.linspace(-3, 3, 41)
    preds = [ranker.predict(rows.assign(relevance=r)) for r in grid]
    for col in ("p_click", "p_engaged", "value"):
        scores = np.stack([p[col].to_numpy() for p in preds])  # (grid, rows)
        assert np.all(np.diff(scores, axis=0) >= 0), col
        assert np.all(scores[-1] > scores[0]), col
    values = np.stack([value_score(p) for p in preds])
    assert np.all(np.diff(values, axis=0) >= 0)


def test_served_score_is_the_same_whatever_position_the_item_was_logged_at(ranker, data):
    rows = data[2].iloc[:2000]
    shuffled = rows.assign(position=np.random.default_rng(3).permutation(rows.position.to_numpy()))
    pd.testing.assert_frame_equal(ranker.predict(rows), ranker.predict(shuffled))
    pd.testing.assert_frame_equal(ranker.predict(rows), ranker.predict(rows.assign(position=0), position="logged"))
    # ... while the logged position does matter to the model (it learned the bias).
    assert (ranker.predict(rows, position=9)["p_click"] < ranker.predict(rows)["p_click"]).mean() > 0.95


def test_missing_feature_values_are_scored_but_missing_columns_are_refused(ranker, data):
    rows = data[2].iloc[:50].copy()
    rows[FEATURES] = np.nan
    p = ranker.predict(rows)
    assert np.isfinite(p.to_numpy()).all() and p.p_click.between(0, 1).all()
    with pytest.raises(KeyError):
        ranker.predict(rows.drop(columns=["noise"]))


# --- persistence and determinism ------------------------------------------------------------


def test_save_then_load_gives_identical_predictions_without_pickles(ranker, data, tmp_path):
    ranker.save(tmp_path / "model")
    loaded = MultiTaskRanker.load(tmp_path / "model", nthread=1)
    rows = data[2]
    pd.testing.assert_frame_equal(loaded.predict(rows), ranker.predict(rows), check_exact=True)
    pd.testing.assert_frame_equal(loaded.predict(rows, position="logged"), ranker.predict(rows, position="logged"))
    assert loaded.version == ranker.version
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "click.json", "engaged.json", "manifest.json", "value.json"]
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["features"] == FEATURES and manifest["heads"] == ["click", "engaged", "value"]
    assert {c["method"] for c in manifest["calibrators"].values()} <= {"isotonic", "platt"}


def test_a_model_whose_files_do_not_match_its_manifest_version_is_refused(ranker, tmp_path):
    path = ranker.save(tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["value_scale"] *= 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version"):
        MultiTaskRanker.load(path)


def test_same_seed_gives_the_same_model_and_another_seed_another():
    train, valid, _ = by_time(logged_impressions(6_000, seed=5))
    fit = lambda seed: MultiTaskRanker(seed=seed, nthread=1, num_boost_round=60).fit(train, valid, FEATURES)
    a, b, c = fit(1), fit(1), fit(2)
    assert a.version == b.version != c.version
    pd.testing.assert_frame_equal(a.predict(valid), b.predict(valid), check_exact=True)


def test_heads_are_trained_only_for_the_labels_the_data_has():
    train, valid, test = by_time(logged_impressions(6_000, seed=6))
    keep = ["hour", *FEATURES, "position", "click"]
    r = MultiTaskRanker(seed=0, nthread=1, num_boost_round=60).fit(train[keep], valid[keep], FEATURES)
    assert r.heads == ["click"] and list(r.predict(test).columns) == ["p_click"]
    with pytest.raises(ValueError):
        r.fit(train, valid, FEATURES, monotone={"relevence": 1})  # a typo is refused, not ignored


# --- filters and the value formula ----------------------------------------------------------


def test_an_item_the_user_already_engaged_with_is_filtered_from_the_candidates():
    candidates = ["i3", "i1", "i7", "i2"]
    assert drop_engaged(candidates, {"i1", "i9"}) == ["i3", "i7", "i2"]
    assert candidates == ["i3", "i1", "i7", "i2"]  # the input is left alone
    frame = pd.DataFrame({"item_id": candidates, "score": [4, 3, 2, 1]})
    assert drop_engaged(frame, ["i7"]).item_id.tolist() == ["i3", "i1", "i2"]
    assert drop_engaged(candidates, []) == candidates


def test_value_score_adds_the_calibrated_heads_with_their_weights():
    pred = pd.DataFrame({"p_click": [0.1, 0.3], "p_engaged": [0.05, 0.0], "value": [0.02, 0.0]})
    w = ValueWeights(click=1.0, engaged=4.0, value=10.0)
    np.testing.assert_allclose(value_score(pred, w), [0.1 + 0.2 + 0.2, 0.3])
    np.testing.assert_allclose(value_score(pred[["p_click"]], w), [0.1, 0.3])  # a click-only model
    with pytest.raises(ValueError):
        ValueWeights(engaged=-1.0)


# --- simulated traffic ----------------------------------------------------------------------

SIM_FEATURES = ["item_clicks", "item_impressions", "item_ctr", "user_clicks", "user_impressions",
                "user_category_clicks", "user_category_share", "affinity"]


def simulator_rows(seed: int = 11, hours: float = 24.0) -> pd.DataFrame:
    """One row per ImpressionServed, labelled by the ItemClicked / ItemEngaged of the same
    request_id + item_id. Features use only events strictly before the impression's time: counts
    of the item's and the user's impressions and clicks, the user's clicks on the item's category,
    and `affinity`, the cosine of the item's content vector with the sum of those of the items the
    user clicked (NaN before the user's first click)."""
    m = Marketplace(SimConfig(seed=seed, n_users=500, n_items=300))
    events = sorted(m.bootstrap_events() + list(m.simulate(hours=hours)) + m.flush_pending(),
                    key=lambda e: e.event_time)  # stable: the bootstrap catalog comes first
    clicked = {(e.request_id, e.item_id) for e in events if isinstance(e, ItemClicked)}
    engaged = {(e.request_id, e.item_id): e.value for e in events if isinstance(e, ItemEngaged)}
    category, vector, taste = {}, {}, {}
    n: dict[tuple, float] = defaultdict(float)
    rows, due, now = [], [], None
    for e in events:
        if e.event_time != now:  # only now apply what happened at the previous instant
            for ev in due:
                if isinstance(ev, ImpressionServed):
                    n["ii", ev.item_id] += 1
                    n["ui", ev.user_id] += 1
                else:
                    n["ic", ev.item_id] += 1
                    n["uc", ev.user_id] += 1
                    n["ucc", ev.user_id, category[ev.item_id]] += 1
                    taste[ev.user_id] = taste.get(ev.user_id, 0.0) + vector[ev.item_id]
            due, now = [], e.event_time
        if isinstance(e, ItemPublished):
            category[e.item_id] = e.category
            vector[e.item_id] = np.asarray(e.content_vector) / np.linalg.norm(e.content_vector)
        elif isinstance(e, ImpressionServed):
            u, i, t = e.user_id, e.item_id, taste.get(e.user_id)
            ucc = n["ucc", u, category[i]]
            rows.append((e.request_id, i, (e.event_time - m.config.start).total_seconds() / 3600, e.position,
                         n["ic", i], n["ii", i], (n["ic", i] + 1) / (n["ii", i] + 10), n["uc", u], n["ui", u],
                         ucc, ucc / (n["uc", u] + 1), np.nan if t is None else t @ vector[i] / np.linalg.norm(t)))
            due.append(e)
        elif isinstance(e, ItemClicked):
            due.append(e)
    df = pd.DataFrame(rows, columns=["request_id", "item_id", "hour", "position", *SIM_FEATURES])
    keys = list(zip(df.request_id, df.item_id))
    df["click"] = [float(k in clicked) for k in keys]
    df["engaged"] = [float(k in engaged) for k in keys]
    df["value"] = [engaged.get(k, 0.0) for k in keys]
    return df


def test_on_simulated_traffic_calibrated_click_ece_is_under_0_02_on_a_later_window_and_below_raw():
    df = simulator_rows()
    train, valid, test = by_time(df)
    assert len(test) > 10_000 and test.click.sum() > 1_000  # enough rows for a stable ECE
    r = MultiTaskRanker(seed=0, nthread=1).fit(train, valid, SIM_FEATURES, monotone={"position": -1})
    m = r.metrics(test)["click"]
    assert m["auc"] > 0.7
    assert m["ece"] <= 0.02
    assert m["ece"] < m["ece_raw"]
    served = r.predict(test)["p_click"]
    assert served.mean() > test.click.mean()  # scored at the top position, above the logged rate
    assert expected_calibration_error(test.click, r.predict(test, position="logged")["p_click"]) == m["ece"]


def test_auc_and_log_loss_standard_errors_follow_their_formulas():
    from eightbox.ranking.multitask import _auc_se, _logloss_se

    # Hanley & McNeil (1982): AUC 0.8 on 50 positives and 50 negatives has a standard error of 0.0445.
    assert abs(_auc_se(0.8, 50, 50) - 0.0445) < 5e-4
    assert _auc_se(0.8, 500, 500) < _auc_se(0.8, 50, 50) / 3 and np.isnan(_auc_se(0.8, 0, 10))
    y, p = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.9, 0.2, 0.6, 0.4])
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert np.isclose(_logloss_se(y, p), losses.std(ddof=1) / 2)
