from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.training.ladder_evidence import shadow_stats
from eightbox.training.promotion import (ArmStats, Evidence, LadderConfig, LadderState, ShadowStats, decide,
                                         experiment_for, guardrail_breaches, shadow_breaches, tail_quantile)

T0 = datetime(2024, 1, 5, tzinfo=timezone.utc)
CFG = LadderConfig(shadow_hours=6, canary_hours=12, holdback_hours=24, min_shadow_requests=50,
                   min_arm_impressions=500, max_ctr_drop=0.1, max_score_psi=1.0)
HEALTHY_SHADOW = ShadowStats(requests=80, score_psi=0.2, challenger_tail_ms=12, champion_tail_ms=10, distinct_scores=500)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def arm(impressions: int, clicks: int, p99: float = 10.0, requests: int = 100, errors: int = 0) -> ArmStats:
    return ArmStats(impressions=impressions, clicks=clicks, requests=requests, errors=errors, p99_ms=p99)


def test_a_gated_challenger_goes_to_shadow_first():
    assert decide(LadderState("7", "challenger", T0), Evidence(), T0, CFG).action == "start_shadow"


def test_shadow_waits_for_its_window_and_enough_requests_then_goes_to_canary():
    s = LadderState("7", "shadow", T0)
    assert decide(s, Evidence(shadow=HEALTHY_SHADOW), at(5.9), CFG).action == "wait"
    few = ShadowStats(requests=10, score_psi=0.1, challenger_tail_ms=10, champion_tail_ms=10, distinct_scores=9)
    assert decide(s, Evidence(shadow=few), at(7), CFG).action == "wait"
    assert decide(s, Evidence(shadow=HEALTHY_SHADOW), at(6), CFG).action == "start_canary"


@pytest.mark.parametrize("shadow, words", [
    (ShadowStats(requests=80, score_psi=0.1, challenger_tail_ms=10, champion_tail_ms=10, distinct_scores=1), "same score"),
    (ShadowStats(requests=80, score_psi=3.0, challenger_tail_ms=10, champion_tail_ms=10, distinct_scores=99), "PSI"),
    (ShadowStats(requests=80, score_psi=0.1, challenger_tail_ms=120, champion_tail_ms=10, distinct_scores=99), "p88 120.0 ms"),
])
def test_a_broken_shadow_is_rejected_at_once_with_the_reason(shadow, words):
    d = decide(LadderState("7", "shadow", T0), Evidence(shadow=shadow), at(1), CFG)
    assert d.action == "reject" and words in " ".join(d.reasons)


def test_a_slower_model_under_the_latency_floor_is_no_breach():
    # 2.2x the champion's p99, but 39 ms is within the 50 ms SLO: noise on a busy box, not a breach.
    slower = ShadowStats(requests=80, score_psi=0.1, challenger_tail_ms=39, champion_tail_ms=18, distinct_scores=99)
    assert decide(LadderState("7", "shadow", T0), Evidence(shadow=slower), at(6), CFG).action == "start_canary"
    assert guardrail_breaches(arm(1000, 100, p99=39), arm(1000, 100, p99=18), CFG) == []
    assert "p99" in guardrail_breaches(arm(1000, 100, p99=80), arm(1000, 100, p99=18), CFG)[0]


def test_a_canary_that_loses_ctr_beyond_the_guardrail_is_rejected():
    d = decide(LadderState("7", "canary", T0), Evidence(champion=arm(4000, 400), challenger=arm(1000, 80)), at(3), CFG)
    assert d.action == "reject" and "20.0% below" in d.reasons[0]


def test_a_ctr_gap_beyond_the_margin_that_noise_explains_is_no_breach():
    # 16 % lower on 500 impressions a side: z = -0.88, well within what chance gives equal arms.
    ev = Evidence(champion=arm(500, 50), challenger=arm(500, 42))
    assert decide(LadderState("7", "canary", T0), ev, at(3), CFG).action == "wait"
    # The same gap on 20 times the traffic is significant (z = -3.9) and breaches.
    ev = Evidence(champion=arm(10_000, 1000), challenger=arm(10_000, 840))
    d = decide(LadderState("7", "canary", T0), ev, at(3), CFG)
    assert d.action == "reject" and "significant" in d.reasons[0]


def test_a_canary_inside_the_margin_but_a_standard_error_worse_is_not_promoted_yet():
    # 9 % lower on ~1,700 impressions an arm, z = -1.09: the `make demo` canary the holdback later rolled back.
    ev = Evidence(champion=arm(1660, 218), challenger=arm(1830, 218))
    d = decide(LadderState("7", "canary", T0), ev, at(12), CFG)
    assert d.action == "wait" and "z = -1.09" in d.reasons[0]
    assert decide(LadderState("7", "canary", T0), ev, at(24), CFG).action == "reject"
    # The same drop on a third of the traffic is within a standard error (z = -0.59): promoted.
    ev = Evidence(champion=arm(500, 66), challenger=arm(550, 66))
    assert decide(LadderState("7", "canary", T0), ev, at(12), CFG).action == "promote"


def test_a_canary_that_looks_worse_without_significance_runs_on_and_then_is_rejected():
    ev = Evidence(champion=arm(500, 50), challenger=arm(500, 42))  # 16 % lower, z = -0.88
    s = LadderState("7", "canary", T0)
    d = decide(s, ev, at(12), CFG)
    assert d.action == "wait" and "extended to 24 h" in d.reasons[0]
    d = decide(s, ev, at(24), CFG)
    assert d.action == "reject" and "still 16.0% lower" in d.reasons[0]
    better = Evidence(champion=arm(500, 50), challenger=arm(500, 47))  # 6 % lower: within the margin
    assert decide(s, better, at(12), CFG).action == "promote"


def test_a_ctr_guardrail_is_not_judged_on_too_little_traffic():
    ev = Evidence(champion=arm(4000, 400), challenger=arm(100, 2))
    assert decide(LadderState("7", "canary", T0), ev, at(3), CFG).action == "wait"


def test_a_canary_within_guardrails_is_promoted_after_its_window():
    ev = Evidence(champion=arm(4000, 400), challenger=arm(1000, 95))  # 5 % lower: within 10 %
    s = LadderState("7", "canary", T0)
    assert decide(s, ev, at(11), CFG).action == "wait"
    assert decide(s, ev, at(12), CFG).action == "promote"


def test_an_erroring_canary_is_rejected():
    ev = Evidence(champion=arm(4000, 400), challenger=arm(1000, 100, requests=100, errors=5))
    assert decide(LadderState("7", "canary", T0), ev, at(1), CFG).action == "reject"


def test_a_new_champion_worse_than_the_holdback_is_rolled_back_and_a_good_one_ends_the_holdback():
    s = LadderState("7", "champion", T0)
    bad = Evidence(champion=arm(600, 90), challenger=arm(9000, 900))  # holdback 0.15 vs new 0.10
    assert decide(s, bad, at(5), CFG).action == "rollback"
    good = Evidence(champion=arm(600, 60), challenger=arm(9000, 1000))
    assert decide(s, good, at(5), CFG).action == "wait"
    assert decide(s, good, at(24), CFG).action == "end_holdback"


def test_each_rung_sets_the_serving_experiment():
    assert experiment_for("shadow", CFG) == dict(challenger_share=0.0, shadow=True, holdback_share=0.0)
    assert experiment_for("canary", CFG)["challenger_share"] == CFG.canary_share
    assert experiment_for("champion", CFG)["holdback_share"] == CFG.holdback_share
    assert experiment_for("rolled_back", CFG) == dict(challenger_share=0.0, shadow=False, holdback_share=0.0)


def test_shares_are_validated():
    with pytest.raises(ValueError):
        LadderConfig(canary_share=0.0)
    with pytest.raises(ValueError):
        LadderConfig(canary_share=0.9, holdback_share=0.2)


def test_the_shadow_judges_the_latency_quantile_its_sample_supports():
    assert tail_quantile(2000) == 0.99 and tail_quantile(1000) == 0.99
    assert tail_quantile(100) == pytest.approx(0.90) and tail_quantile(150) == pytest.approx(1 - 10 / 150)
    assert tail_quantile(12) == 0.5 and tail_quantile(0) == 0.99


def test_three_slow_requests_among_150_do_not_roll_a_shadow_back():
    # The closed-loop test's case: a healthy challenger whose p99 (between its second and third slowest
    # of ~150 requests) was 57.9 ms against 17.5 ms, after a few requests met a busy machine.
    rows = [{"champion_scores": [0.1 * (i % 7)], "challenger_scores": [0.1 * (i % 9)],
             "champion_latency_ms": 17.0, "challenger_latency_ms": 60.0 if i < 3 else 18.0} for i in range(150)]
    stats = shadow_stats(pd.DataFrame(rows))
    assert np.percentile([r["challenger_latency_ms"] for r in rows], 99) > 50  # a p99 would have breached
    assert stats.challenger_tail_ms == 18.0 and shadow_breaches(stats, LadderConfig()) == []
    slow = shadow_stats(pd.DataFrame([{**r, "challenger_latency_ms": 60.0 if i < 30 else 18.0}
                                      for i, r in enumerate(rows)]))
    assert any("p93" in b for b in shadow_breaches(slow, LadderConfig()))  # a fifth slow: breached
