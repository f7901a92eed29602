import math
from datetime import datetime, timedelta, timezone

from eightbox.loop import DayRow, LoopProfile, summarise, summary_line
from eightbox.loop_report import _events, write_loop_report

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
PROFILE = LoopProfile(days=3, drift_day=2)


def rows() -> list[DayRow]:
    return [DayRow(1, "2024-01-02", requests=100, shown=1000, clicks=100, ctr_expected=0.10, ctr_popularity=0.08,
                   ctr_oracle=0.2, p99_ms=30.0),
            DayRow(2, "2024-01-03", requests=100, shown=1000, clicks=70, ctr_expected=0.07, ctr_popularity=0.08,
                   ctr_oracle=0.2, p99_ms=30.0, notes=["retrained v2 on logged features: gate passed → shadow"]),
            DayRow(3, "2024-01-04", requests=100, shown=1000, clicks=95, ctr_expected=0.095, ctr_popularity=0.08,
                   ctr_oracle=0.2, p99_ms=30.0, notes=["01-04 12:00 v2: canary → champion"])]


def test_with_no_whole_day_after_the_takeover_the_summary_compares_the_last_day_with_before_the_drift():
    drift = T0 + timedelta(days=2)
    s = summarise(rows(), PROFILE, detected_at=drift + timedelta(hours=24), drift_at=drift,
                  retrains=[drift + timedelta(days=1)], promotions=[(drift + timedelta(days=1, hours=12), drift + timedelta(days=1))],
                  latencies=[10.0, 20.0], wall_s=1.0, report="r")
    assert math.isclose(s["recovered_ratio"], 0.95) and s["promoted"] and s["detected_after_hours"] == 24.0
    assert math.isclose(s["ctr_vs_popularity"], 0.095 / 0.08)
    assert "\"days\"" not in summary_line(s)


def test_recovery_is_the_mean_of_the_days_served_wholly_after_a_post_drift_model_took_over():
    drift = T0 + timedelta(days=2)  # day 2 (2024-01-03)
    days = rows() + [DayRow(4, "2024-01-05", ctr_expected=0.09), DayRow(5, "2024-01-06", ctr_expected=0.11)]
    # Trained on day 3 (after the drift), promoted at noon on day 3: days 4 and 5 are "after recovery".
    s = summarise(days, LoopProfile(days=5, drift_day=2), detected_at=None, drift_at=drift, retrains=[],
                  promotions=[(drift + timedelta(hours=12), drift), (T0 + timedelta(days=3, hours=12), T0 + timedelta(days=4))],
                  latencies=[], wall_s=1.0, report="r")
    assert s["recovery_days"] == [4, 5] and math.isclose(s["recovered_ratio"], 1.0) and s["promoted"]


def test_promoting_a_model_that_learned_only_from_before_the_drift_does_not_count():
    drift = T0 + timedelta(days=2)
    s = summarise(rows(), PROFILE, detected_at=None, drift_at=drift, retrains=[], promotions=[(drift + timedelta(hours=12), drift)],
                  latencies=[], wall_s=1.0, report="r")
    assert not s["promoted"] and not s["drift_detected"] and s["serving_p99_ms"] is None


def test_the_page_plots_the_days_and_names_the_ladder_moves(tmp_path):
    drift = T0 + timedelta(days=2)
    s = summarise(rows(), PROFILE, detected_at=None, drift_at=drift, retrains=[], promotions=[], latencies=[1.0],
                  wall_s=1.0, report="r")
    page = write_loop_report(s, PROFILE.drift_day, tmp_path / "loop.html").read_text()
    assert "data:image/png;base64," in page and "monitoring-day3.html" in page
    assert _events(["01-04 12:00 v2: canary → champion", "retrained v5: gate refused (x)"]) == ["v2 promoted", "v5 refused"]


def test_concept_drift_alerts_before_the_drift_day_are_counted_as_false_alarms(tmp_path):
    days = rows()
    days[0].drift_alerts = ["model/concept_drift[uc_affinity_30d] = 0.3 > 0.25"]
    days[1].drift_alerts = list(days[0].drift_alerts)
    days[1].alerts = days[1].drift_alerts + ["data/psi[item_clicks_7d] = 1.2 > 0.2"]
    drift = T0 + timedelta(days=2)
    s = summarise(days, PROFILE, detected_at=drift + timedelta(hours=24), drift_at=drift, retrains=[], promotions=[],
                  latencies=[], wall_s=1.0, report="r")
    assert s["drift_alert_days"] == [1, 2] and s["false_alarm_days"] == [1]
    page = write_loop_report(s, PROFILE.drift_day, tmp_path / "loop.html").read_text()
    assert "concept_drift[uc_affinity_30d]" in page and "1 other alert(s)" in page
