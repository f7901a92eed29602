"""Unit tests of ECE and the calibrators (numpy only; no services)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eightbox.ranking.calibration import Calibrator, choose_calibrator, expected_calibration_error, log_loss


def labels_from(p: np.ndarray, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(p.size) < p).astype(float)


def miscalibrated(n: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank well but are overconfident and shifted: true p = sigmoid(z), shown sigmoid(2.5 z + 1)."""
    z = np.random.default_rng(seed + 1).normal(-1.0, 1.2, n)
    y = labels_from(1 / (1 + np.exp(-z)), seed)
    return 1 / (1 + np.exp(-(2.5 * z + 1.0))), y


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_perfectly_calibrated_predictions_is_near_zero(strategy):
    p = np.random.default_rng(1).random(200_000)
    assert expected_calibration_error(labels_from(p), p, strategy=strategy) < 0.01


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_constant_0_9_on_half_positives_is_0_4(strategy):
    y = np.tile([0.0, 1.0], 500)
    assert expected_calibration_error(y, np.full(y.size, 0.9), strategy=strategy) == pytest.approx(0.4)


def test_ece_is_the_count_weighted_mean_gap_over_bins():
    # Two uniform bins: [0, 0.5) holds p=0.2 x3 with one positive, [0.5, 1] holds p=0.7 x1, positive.
    y, p = np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.2, 0.2, 0.2, 0.7])
    expected = 3 / 4 * abs(1 / 3 - 0.2) + 1 / 4 * abs(1.0 - 0.7)
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)


def test_ece_puts_probability_one_in_the_top_bin_and_rejects_bad_input():
    assert expected_calibration_error([1.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([1.0], [0.5, 0.5])
    with pytest.raises(ValueError):
        expected_calibration_error([1.0], [0.5], strategy="nope")


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_lowers_ece_of_miscalibrated_scores_to_at_most_0_02(method):
    p_fit, y_fit = miscalibrated(seed=0)
    p_new, y_new = miscalibrated(seed=10)  # calibrate on one window, judge on another
    cal = Calibrator(method).fit(p_fit, y_fit)
    before = expected_calibration_error(y_new, p_new)
    after = expected_calibration_error(y_new, cal.transform(p_new))
    assert before > 0.1
    assert after <= 0.02
    assert log_loss(y_new, cal.transform(p_new)) < log_loss(y_new, p_new)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibrators_round_trip_through_json_exactly(method):
    p, y = miscalibrated(n=5_000)
    cal = Calibrator(method).fit(p, y)
    loaded = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    grid = np.concatenate([np.linspace(-0.1, 1.1, 1001), p])  # also outside the fitted range
    assert loaded.method == method
    assert np.array_equal(loaded.transform(grid), cal.transform(grid))
    assert loaded.to_dict() == cal.to_dict()


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibrated_probabilities_never_decrease_with_the_raw_score(method):
    p, y = miscalibrated(n=5_000)
    out = Calibrator(method).fit(p, y).transform(np.linspace(0.0, 1.0, 2001))
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_isotonic_clips_outside_its_fitted_range():
    cal = Calibrator("isotonic").fit(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert cal.transform(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_choose_calibrator_scores_methods_out_of_fold_and_picks_the_lower_log_loss():
    p, y = miscalibrated(n=20_000)
    cal, scores = choose_calibrator(p, y)
    assert set(scores) == {"isotonic", "platt"}
    assert cal.method == min(scores, key=scores.get)
    again, scores_again = choose_calibrator(p, y)
    assert scores_again == scores and again.to_dict() == cal.to_dict()  # deterministic


def test_unfitted_calibrator_and_unknown_method_are_refused():
    with pytest.raises(RuntimeError):
        Calibrator("platt").transform([0.5])
    with pytest.raises(ValueError):
        Calibrator("beta")  # type: ignore[arg-type]
