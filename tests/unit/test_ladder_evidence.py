from datetime import datetime, timedelta, timezone

import pandas as pd

from eightbox.training.ladder_evidence import arm_stats, shadow_stats

T = datetime(2024, 1, 5, tzinfo=timezone.utc)


def imp(req, item, arm, team=None, at=T):
    return {"request_id": req, "item_id": item, "experiment_arm": arm, "team": team, "event_time": at}


def test_clicks_count_for_their_impression_arm_within_the_attribution_window_only():
    imps = pd.DataFrame([imp("r1", "a", "champion"), imp("r1", "b", "champion"), imp("r2", "a", "challenger"),
                         imp("r3", "c", "interleaved", team="challenger"), imp("r3", "d", "interleaved", team="champion")])
    clicks = pd.DataFrame([
        {"request_id": "r1", "item_id": "a", "event_time": T + timedelta(minutes=5)},
        {"request_id": "r1", "item_id": "a", "event_time": T + timedelta(minutes=6)},  # a repeat: one click
        {"request_id": "r2", "item_id": "a", "event_time": T + timedelta(hours=2)},  # past attribution
        {"request_id": "r3", "item_id": "c", "event_time": T + timedelta(minutes=1)},  # credits its team
        {"request_id": None, "item_id": "b", "event_time": T + timedelta(minutes=1)},  # not from a slate
    ])
    arms = arm_stats(imps, clicks, timedelta(hours=1))
    assert (arms["champion"].impressions, arms["champion"].clicks) == (3, 1)
    assert (arms["challenger"].impressions, arms["challenger"].clicks) == (2, 1)
    assert arms["champion"].requests == 2


def test_shadow_stats_flag_a_constant_challenger_and_measure_score_shift():
    rows = [{"champion_scores": [0.1 * i, 0.05 * i], "challenger_scores": [0.3, 0.3],
             "champion_latency_ms": 10.0, "challenger_latency_ms": 20.0} for i in range(1, 11)]
    s = shadow_stats(pd.DataFrame(rows))
    assert s.requests == 10 and s.distinct_scores == 1
    assert s.score_psi > 0.2 and s.challenger_tail_ms == 20.0 and s.champion_tail_ms == 10.0
