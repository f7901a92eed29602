"""PSI, its thresholds and ECE on cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eightbox.monitoring.model_checks import calibration_curve, ece_check
from eightbox.monitoring.psi import EPSILON, bin_shares, category_shares, numeric_psi, psi
from eightbox.monitoring.thresholds import ACT, DEFAULTS, NO_DATA, STABLE, WATCH, Threshold, thresholds
from eightbox.training.reference import numeric_summary


def test_psi_reproduces_the_seeds_worked_example():
    assert psi([0.50, 0.35, 0.15], [0.65, 0.25, 0.10]) == pytest.approx(0.0933, abs=5e-5)
    assert round(psi([0.50, 0.35, 0.15], [0.65, 0.25, 0.10]), 3) == 0.093


def test_psi_is_zero_for_equal_shares_and_finite_with_an_empty_bin():
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    empty = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    assert math.isfinite(empty)
    assert empty == pytest.approx(2 * (-0.1) * math.log(0.4 / 0.5) + (0.2 - EPSILON) * math.log(0.2 / EPSILON))


def test_psi_refuses_mismatched_bins():
    with pytest.raises(ValueError, match="share vectors"):
        psi([0.5, 0.5], [1.0])


@pytest.mark.parametrize("value, status", [(0.05, STABLE), (0.0999, STABLE), (0.1, WATCH), (0.15, WATCH),
                                           (0.2, WATCH), (0.2001, ACT), (0.9, ACT), (float("nan"), NO_DATA)])
def test_the_seed_thresholds_band_psi(value, status):
    assert DEFAULTS["psi"].status(value) == status


def test_thresholds_are_configurable_and_unknown_names_refused():
    th = thresholds({"psi": (0.2, 0.3)})
    assert th["psi"].status(0.25) == WATCH and th["psi"].status(0.15) == STABLE
    assert th["ece"] == DEFAULTS["ece"]
    with pytest.raises(ValueError, match="unknown monitoring thresholds"):
        thresholds({"pis": (0.1, 0.2)})
    with pytest.raises(ValueError, match="watch <= act"):
        Threshold(0.3, 0.2)


def test_live_values_binned_on_the_reference_deciles_give_small_psi_when_unchanged_and_large_when_shifted():
    rng = np.random.default_rng(0)
    summary = numeric_summary(rng.normal(size=20_000))
    assert bin_shares(rng.normal(size=5000), summary["edges"]).sum() == pytest.approx(1.0)
    assert numeric_psi(summary, rng.normal(size=5000)) < 0.02
    assert numeric_psi(summary, rng.normal(loc=1.0, size=5000)) > 0.2
    assert math.isnan(numeric_psi(summary, [np.nan, np.nan]))


def test_categories_outside_the_reference_pool_as_other():
    shares = category_shares(["a", "a", "b", "zzz", None], {"a": 0.5, "b": 0.5})
    assert shares == {"a": 0.5, "b": 0.25, "__other__": 0.25}


def test_ece_is_known_on_constructed_cases():
    y = np.array([0, 1] * 250)
    always_09 = ece_check("p_click", y, np.full(500, 0.9), DEFAULTS["ece"])
    assert always_09.value == pytest.approx(0.4) and always_09.status == ACT
    perfect = ece_check("p_click", np.array([0] * 300 + [1] * 200), np.array([0.0] * 300 + [1.0] * 200), DEFAULTS["ece"])
    assert perfect.value == 0.0 and perfect.status == STABLE
    # Half the rows at 0.2 with 20% positives, half at 0.7 with 60%: |0.6-0.7| weighted by 1/2.
    y2 = np.array(([1] * 20 + [0] * 80) * 2 + ([1] * 60 + [0] * 40) * 2)
    p2 = np.array([0.2] * 200 + [0.7] * 200)
    assert ece_check("p_click", y2, p2, DEFAULTS["ece"]).value == pytest.approx(0.05)


def test_ece_without_enough_matured_labels_is_no_data_not_zero():
    check = ece_check("p_click", np.array([1, 0]), np.array([0.5, 0.5]), DEFAULTS["ece"])
    assert check.status == NO_DATA and math.isnan(check.value)


def test_calibration_curve_reports_each_bins_mean_prediction_and_rate():
    y = np.array([1] * 20 + [0] * 80 + [1] * 60 + [0] * 40)
    p = np.array([0.2] * 100 + [0.7] * 100)
    curve = calibration_curve(y, p)
    assert curve[["mean_p", "rate", "rows"]].values.tolist() == [[0.2, 0.2, 100], [0.7, 0.6, 100]]


def test_thresholds_come_from_settings_and_a_bad_override_fails_at_startup():
    from pydantic import ValidationError

    from eightbox.settings import Settings

    settings = Settings(monitoring_thresholds='{"psi": [0.2, 0.3]}')
    assert thresholds(settings.monitoring_threshold_overrides)["psi"] == Threshold(0.2, 0.3)
    for bad in ('{"pis": [0.1, 0.2]}', '{"psi": [0.3, 0.2]}', "psi=0.1"):
        with pytest.raises(ValidationError, match="EIGHTBOX_MONITORING_THRESHOLDS"):
            Settings(monitoring_thresholds=bad)


def test_shadow_scores_of_a_challenger_that_ranks_like_the_champion_are_stable_and_a_shifted_one_acts():
    import pandas as pd

    from eightbox.monitoring.model_checks import shadow_checks

    rng = np.random.default_rng(3)

    def requests(champion: str, challenger: str, shift: float) -> pd.DataFrame:
        ours = rng.beta(2, 20, size=(400, 10))
        theirs = ours + shift + rng.normal(0, 0.001, size=ours.shape)
        return pd.DataFrame({"champion_version": champion, "challenger_version": challenger,
                             "champion_scores": [list(r) + [None] for r in ours],  # None: no ranker score
                             "challenger_scores": [list(r) for r in theirs]})

    checks = {c.subject: c for c in shadow_checks(pd.concat([requests("3", "4", 0.0), requests("3", "5", 0.05)]),
                                                  DEFAULTS["shadow_score_psi"])}
    assert checks["v4 vs v3"].status == STABLE and checks["v4 vs v3"].value < 0.02
    assert checks["v5 vs v3"].status == ACT
    assert checks["v4 vs v3"].detail == "400 shadowed requests, 4000 challenger scores"
