"""The promotion gate as a pure function: who passes, who is refused, and what the reasons say."""

from __future__ import annotations

import math

import pytest

from eightbox.training.gate import GateThresholds, gate

THRESHOLDS = GateThresholds(max_drop={"recall_at_100": 0.02, "auc": 0.01}, max_rise={"logloss": 0.05},
                            floors={"auc": 0.6}, ceilings={"ece": 0.05})
CHAMPION = {"recall_at_100": 0.40, "auc": 0.75, "logloss": 0.50, "ece": 0.02}


def test_a_candidate_as_good_as_the_champion_passes_with_no_reasons():
    result = gate(dict(CHAMPION), CHAMPION, THRESHOLDS)
    assert result.passed and bool(result) and result.reasons == []


def test_a_drop_within_the_tolerance_passes_and_one_beyond_it_is_refused():
    assert gate({**CHAMPION, "recall_at_100": 0.40 * 0.981}, CHAMPION, THRESHOLDS).passed
    result = gate({**CHAMPION, "recall_at_100": 0.35}, CHAMPION, THRESHOLDS)
    assert not result.passed and not bool(result)
    [reason] = result.reasons
    # the sentence names the metric, both values, the change and the allowed drop
    assert reason.startswith("recall_at_100 fell 12.50% vs the champion")
    assert "0.4 → 0.35" in reason and "at most 2.00%" in reason


def test_the_tolerance_boundary_itself_passes():
    assert gate({**CHAMPION, "auc": 0.75 - 0.01 * 0.75}, CHAMPION, THRESHOLDS).passed
    assert gate({**CHAMPION, "logloss": 0.50 + 0.05 * 0.50}, CHAMPION, THRESHOLDS).passed


def test_a_lower_is_better_metric_is_refused_when_it_rises_too_far():
    [reason] = gate({**CHAMPION, "logloss": 0.60}, CHAMPION, THRESHOLDS).reasons
    assert reason.startswith("logloss rose 20.00% vs the champion (0.5 → 0.6)") and "at most 5.00%" in reason


def test_improvements_never_count_against_a_candidate():
    better = {"recall_at_100": 0.9, "auc": 0.99, "logloss": 0.1, "ece": 0.001}
    assert gate(better, CHAMPION, THRESHOLDS).passed


def test_absolute_bounds_refuse_even_a_candidate_better_than_its_champion():
    bad_champion = {**CHAMPION, "ece": 0.30}
    result = gate({**CHAMPION, "ece": 0.08}, bad_champion, THRESHOLDS)
    assert result.reasons == ["ece is 0.08, above the ceiling of 0.05."]


def test_every_failing_check_gives_its_own_reason_sorted_by_metric():
    result = gate({"recall_at_100": 0.1, "auc": 0.5, "logloss": 0.9, "ece": 0.2}, CHAMPION, THRESHOLDS)
    assert [r.split()[0] for r in result.reasons] == ["auc", "auc", "ece", "logloss", "recall_at_100"]
    assert "auc is 0.5, below the floor of 0.6." in result.reasons


def test_without_a_champion_only_floors_and_ceilings_decide():
    weak = {"recall_at_100": 0.01, "auc": 0.61, "logloss": 5.0, "ece": 0.01}
    assert gate(weak, None, THRESHOLDS).passed
    assert gate(weak, {}, THRESHOLDS).passed
    assert gate({**weak, "auc": 0.59}, None, THRESHOLDS).reasons == ["auc is 0.59, below the floor of 0.6."]


def test_a_metric_the_champion_lacks_is_not_compared_relatively():
    assert gate({**CHAMPION, "recall_at_100": 0.01}, {"auc": 0.75}, THRESHOLDS).passed


def test_a_metric_missing_from_the_candidate_is_a_refusal_not_a_pass():
    candidate = {k: v for k, v in CHAMPION.items() if k != "ece"}
    assert gate(candidate, CHAMPION, THRESHOLDS).reasons == [
        "ece is missing from the candidate's metrics, and the gate checks it."]


def test_a_non_finite_candidate_metric_is_refused():
    [reason] = gate({**CHAMPION, "logloss": math.nan}, CHAMPION, THRESHOLDS).reasons
    assert reason == "logloss is nan for the candidate, not a finite number."


def test_a_zero_champion_value_still_bounds_the_candidate():
    thresholds = GateThresholds(max_drop={"lift": 0.1})
    assert gate({"lift": 0.0}, {"lift": 0.0}, thresholds).passed
    [reason] = gate({"lift": -0.01}, {"lift": 0.0}, thresholds).reasons
    assert reason.startswith("lift fell inf% vs the champion (0 → -0.01)")


def test_metrics_no_threshold_names_are_ignored():
    assert gate({**CHAMPION, "unrelated": -1e9}, {**CHAMPION, "unrelated": 1.0}, THRESHOLDS).passed


def test_thresholds_round_trip_through_a_dict_and_reject_negative_tolerances():
    assert GateThresholds.from_dict(THRESHOLDS.to_dict()) == THRESHOLDS
    assert GateThresholds().metrics() == set() and gate({}, None, GateThresholds()).passed
    with pytest.raises(ValueError, match="max_drop"):
        GateThresholds(max_drop={"auc": -0.1})


def test_with_noise_z_a_drop_within_chance_passes_and_a_drop_beyond_it_is_refused():
    thresholds = GateThresholds(max_drop={"recall": 0.10}, noise_z=1.645)
    champion = {"recall": 0.90, "recall_se": 0.04}
    # 0.75 is 16.7 % below: refused without noise, within 0.09 + 1.645 * 0.057 = 0.183 with it.
    noisy = {"recall": 0.75, "recall_se": 0.04}
    assert not gate(noisy, champion, GateThresholds(max_drop={"recall": 0.10})).passed
    assert gate(noisy, champion, thresholds).passed
    [reason] = gate({"recall": 0.70, "recall_se": 0.04}, champion, thresholds).reasons
    assert "plus 1.645 standard errors of the difference (0.0565685)" in reason
    # Without a standard error on either side the tolerance stays as it is.
    assert not gate({"recall": 0.75}, {"recall": 0.90}, thresholds).passed
    assert GateThresholds.from_dict(thresholds.to_dict()) == thresholds
    with pytest.raises(ValueError, match="noise_z"):
        GateThresholds(noise_z=-1.0)
