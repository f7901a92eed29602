"""The closed loop end to end, at a small scale, on the session stack plus the pusher and the serving
process: day 0 under a popularity policy (Kafka → lake → Flink → Spark → Feast → training → champion),
then served days through `/recommend` and `/events` on the simulated clock, a taste drift, monitoring,
a retrain on serving's own logged impressions and the ladder (shadow → canary → champion).

It runs first in the session (conftest orders it): the loop reads whole topics into its lake, and
other tests' events there would be another world's traffic. It leaves the topics holding its own
events, which the later tests already tolerate (they share the broker with each other too).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from eightbox.deploy.pusher_service import pusher
from eightbox.deploy.serving_service import serving
from eightbox.deploy.supervisor import Supervisor
from eightbox.features.stream import control
from eightbox.loop import QUICK, run_loop

from .conftest import _OFFSET

# The whole loop runs in the module fixture: minutes, not the 15 a single test may take.
pytestmark = [pytest.mark.closed_loop, pytest.mark.timeout(2400)]

# `eightbox demo --quick` (a 250-user world) with two days before the drift and at least two served
# wholly by post-drift models after it (three when the first such canary passes), so that both sides
# of the recovery ratio are means of days: with one day before the drift (QUICK's) a clean-clone run
# measured 0.900 where others measured 0.996-1.025, on the same visits, the spread coming from the
# models alone; with days=6, one run's first post-drift canary was rolled back and one day was left.
PROFILE = replace(QUICK, days=7, drift_day=3)


@pytest.fixture(scope="module")
def summary(stack, stack_settings, tmp_path_factory):
    from eightbox.demo import _day_zero, _ensure_stream_job

    settings = stack_settings.model_copy(update={
        "home": tmp_path_factory.mktemp("loop"), "serving_port": 28200 + _OFFSET,
        "serving_model_name": f"loop-test-{uuid.uuid4().hex[:8]}",  # the session's MLflow is shared
        "serving_trust_request_time": True, "serving_reload_interval_s": 3600.0,
        "serving_budget_scale": 5.0, "serving_request_timeout_s": 10.0, "start_timeout_s": 180.0})
    services = Supervisor(settings, {"pusher": pusher(settings), "serving": serving(settings)})
    services.up(progress=lambda *_: None)
    job_id = _ensure_stream_job(settings)
    try:
        yield run_loop(settings, PROFILE, bootstrap=lambda: _day_zero(settings, PROFILE, job_id))
    finally:
        control.stop(settings, job_id, savepoint=False)
        services.down(progress=lambda *_: None)


def test_retrains_run_nightly_and_learn_from_served_impressions(summary):
    # Each night whose ladder is idle retrains; one with a challenger still climbing skips it.
    assert len(summary["retrains"]) >= PROFILE.days - 2, summary["retrains"]
    assert set(summary["retrain_sources"]) == {"logged"}, summary  # serving's own logs
    notes = [n for day in summary["days"] for n in day["notes"] if n.startswith("retrained")]
    assert len(notes) == len(summary["retrains"]) and all("gate" in n for n in notes), notes


def test_concept_drift_alerts_are_reported_with_the_day_they_came(summary):
    # Whether this small world's drift is detected is reported, not asserted: its taste lift rests on
    # about 100 clicks a day where the taste is known, and of four such runs' lakes three showed the
    # drift (drops of 30-42 %) and one did not (1.5 %). The check itself is tested on a world with
    # the traffic to decide (tests/unit/test_concept_checks.py).
    days = summary["drift_alert_days"]
    print(f"concept drift alerts on days {days}; false alarms on {summary['false_alarm_days']}")
    after = [d for d in days if d >= PROFILE.drift_day]
    assert summary["drift_detected"] == bool(after)
    assert summary["detected_after_hours"] == (24.0 * (after[0] - PROFILE.drift_day + 1) if after else None)
    assert summary["false_alarm_days"] == [d for d in days if d < PROFILE.drift_day]


def test_a_model_retrained_after_the_drift_is_promoted(summary):
    assert summary["promoted"], summary["promotions"]  # a model that learned from drifted traffic took over
    assert summary["recovery_days"] and min(summary["recovery_days"]) > PROFILE.drift_day
    print(f"recovered_ratio {summary['recovered_ratio']:.3f} over days {summary['recovery_days']}")
    assert summary["recovered_ratio"] >= 0.9, summary  # CTR after recovery vs before the drift


def test_every_day_is_measured_against_popularity_and_the_oracle(summary):
    for day in summary["days"]:
        assert 0 < day["ctr_popularity"] < day["ctr_oracle"] and 0 < day["ctr_expected"] < day["ctr_oracle"], day
    assert summary["ctr_vs_oracle"] < 1


def test_every_served_day_answered_from_the_full_funnel_mostly(summary):
    for day in summary["days"]:
        assert day["requests"] > 100 and day["rungs"].get("full", 0) >= 0.9 * day["requests"], day
