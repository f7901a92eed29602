"""When the loop retrains and runs its nightly batch (training/retrain_trigger.py), and the
controller's state surviving a restart (training/controller.py): pure logic, no services."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd

from eightbox.training.controller import ControllerState
from eightbox.training.promotion import LadderState
from eightbox.training.retrain_trigger import (FIRST_MODEL_RETRY, MAX_CATCH_UP_DAYS, drift_alerts, first_model_due,
                                               nightly_days, retrain_reason)

T0 = datetime(2024, 3, 1, 2, 30, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def test_a_retrain_follows_concept_drift_at_once_and_otherwise_the_schedule():
    assert retrain_reason(T0, T0 - DAY, DAY, drift_alerts=0) == "schedule"
    assert retrain_reason(T0, T0 - timedelta(hours=23), DAY, drift_alerts=0) is None
    assert retrain_reason(T0, T0 - timedelta(hours=1), DAY, drift_alerts=1) == "concept drift"
    assert retrain_reason(T0, T0 - 9 * DAY, None, drift_alerts=0) is None  # drift only
    assert retrain_reason(T0, None, DAY, drift_alerts=0) is None  # the caller starts the schedule's clock


def test_a_new_platform_trains_its_first_model_once_there_are_impressions_and_retries_hourly():
    assert first_model_due(T0, None, has_impressions=True)
    assert not first_model_due(T0, None, has_impressions=False)
    assert not first_model_due(T0, T0 - FIRST_MODEL_RETRY / 2, has_impressions=True)  # it just failed
    assert first_model_due(T0, T0 - FIRST_MODEL_RETRY, has_impressions=True)


def test_the_nightly_batch_covers_each_whole_day_once_from_its_hour():
    yesterday = date(2024, 2, 29)
    assert nightly_days(T0, date(2024, 2, 28), hour=2) == [yesterday]
    assert nightly_days(T0, yesterday, hour=2) == []  # done
    assert nightly_days(T0.replace(hour=1), date(2024, 2, 28), hour=2) == []  # not yet its hour
    assert nightly_days(T0, date(2024, 2, 26), hour=2) == [date(2024, 2, 27), date(2024, 2, 28), yesterday]
    caught_up = nightly_days(T0, None, hour=2)  # first run, or after a long outage: the latest days only
    assert len(caught_up) == MAX_CATCH_UP_DAYS and caught_up[-1] == yesterday
    assert nightly_days(T0, date(2023, 1, 1), hour=2) == caught_up


def results(*rows) -> pd.DataFrame:
    return pd.DataFrame([{"window_end": pd.Timestamp(end), "model_name": name, "model_version": "3",
                          "check": check, "status": status, "value": 0.4, "detail": "lift 1.3 → 0.8"}
                         for end, name, check, status in rows])


def test_only_acting_concept_drift_alerts_of_the_model_since_the_last_retrain_count():
    frame = results((T0 - 2 * DAY, "m", "concept_drift", "act"),  # before the last retrain
                    (T0, "m", "concept_drift", "act"),
                    (T0, "m", "concept_drift", "watch"),
                    (T0, "m", "psi", "act"),  # a feature moved: diagnosis, not a retrain
                    (T0, "other", "concept_drift", "act"))
    alerts = drift_alerts(frame, "m", since=T0 - DAY)
    assert len(alerts) == 1 and "v3" in alerts[0] and "0.400" in alerts[0]
    assert len(drift_alerts(frame, "m", since=None)) == 2
    assert drift_alerts(pd.DataFrame(), "m", since=None) == []


def test_the_controller_state_survives_a_restart_with_its_ladder():
    ladder = LadderState("7", "canary", T0, (("challenger", T0 - DAY, "passed the offline gate"),
                                               ("shadow", T0 - DAY, ""), ("canary", T0, "shadow passed")))
    state = ControllerState(started=T0 - 3 * DAY, nightly_done=date(2024, 2, 29), last_retrain=T0 - DAY,
                            ladder=ladder)
    assert ControllerState.from_json(state.to_json()) == state
    assert ControllerState.from_json(ControllerState().to_json()) == ControllerState()


def test_a_retrain_learns_from_logged_features_only_once_enough_impressions_logged_them():
    from eightbox.training.pipeline import MIN_LOGGED_SHARE, example_source

    def impressions(logged: int, plain: int) -> pd.DataFrame:
        return pd.DataFrame({"features": [{"f": 1.0}] * logged + [None] * (plain // 2) + [{}] * (plain - plain // 2)})

    assert example_source(impressions(100, 0)) == "logged"
    assert example_source(impressions(50, 50)) == "logged"  # the quick loop's first retrain: day 0 has none
    assert example_source(impressions(15, 985)) == "point_in_time"  # serving has just begun
    assert example_source(impressions(int(MIN_LOGGED_SHARE * 100), 100 - int(MIN_LOGGED_SHARE * 100))) == "logged"
    assert example_source(impressions(0, 0)) == "point_in_time"
