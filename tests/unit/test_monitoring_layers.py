"""Product KPIs by segment, system checks from a real Prometheus exposition, and the exports:
the lake table round trip and the Prometheus text of a result."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eightbox.monitoring.lake_table import read_results, write_result
from eightbox.monitoring.product_metrics import (daily_ctr, kpis, product_checks, returning_users,
                                                 segment_of)
from eightbox.monitoring.prometheus import render
from eightbox.monitoring.results import CheckResult, MonitoringResult
from eightbox.monitoring.system_checks import histogram_quantile, serving_checks
from eightbox.monitoring.thresholds import ACT, DEFAULTS, INFO, NO_DATA, STABLE, WATCH
from eightbox.serving.metrics import ServingMetrics
from eightbox.settings import Settings

START = pd.Timestamp("2024-05-02", tz="UTC")


def test_a_user_is_returning_only_with_activity_in_the_lookback_before_the_window():
    activity = pd.DataFrame({"user_id": ["old", "recent", "inside", "ancient"],
                             "event_time": pd.to_datetime(["2024-04-25 00:00", "2024-05-01 23:00", "2024-05-02 01:00",
                                                           "2024-01-01 00:00"], utc=True)})
    returning = returning_users(activity, START, pd.Timedelta(days=30))
    assert returning == {"old", "recent"}
    assert segment_of(pd.Series(["old", "inside", "nobody"]), returning).tolist() == ["returning", "new", "new"]


def labelled_frame() -> pd.DataFrame:
    # Returning users: 10 impressions, 3 clicks, 1 engagement; new users: 10 impressions, 1 click.
    return pd.DataFrame({
        "segment": ["returning"] * 10 + ["new"] * 10,
        "click": [1, 1, 1] + [0] * 7 + [1] + [0] * 9,
        "engaged": [1] + [0] * 19,
        "item_id": [f"i{n % 4}" for n in range(20)],
        "event_time": pd.to_datetime(["2024-05-02 10:00"] * 12 + ["2024-05-03 10:00"] * 8, utc=True),
    })


def test_kpis_by_segment_and_catalog_coverage():
    lab = labelled_frame()
    k = kpis(lab, lab, catalog_size=10)
    assert k[("ctr", "returning")] == (0.3, 10) and k[("ctr", "new")] == (0.1, 10) and k[("ctr", "all")] == (0.2, 20)
    assert k[("engagement_rate", "all")] == (0.05, 20)
    assert k[("coverage", "all")] == (0.4, 20)  # 4 of 10 catalog items shown


def test_a_kpi_drop_against_the_previous_window_is_an_alert_and_a_level_is_info():
    now = {("ctr", "all"): (0.05, 1000), ("coverage", "all"): (0.4, 1000)}
    before = {("ctr", "all"): (0.10, 1000), ("coverage", "all"): (0.42, 1000)}
    checks = {(c.check, c.subject): c for c in product_checks(now, before, DEFAULTS["kpi_drop"])}
    assert checks[("ctr", "all")].status == INFO and checks[("ctr", "all")].value == 0.05
    assert checks[("ctr_drop", "all")].value == pytest.approx(0.5) and checks[("ctr_drop", "all")].status == ACT
    assert checks[("coverage_drop", "all")].status == STABLE
    unmeasured = product_checks({("ctr", "new"): (math.nan, 0)}, {}, DEFAULTS["kpi_drop"])
    assert [c.status for c in unmeasured] == [NO_DATA, NO_DATA]


def test_daily_ctr_has_one_row_per_day_and_segment_including_all():
    daily = daily_ctr(labelled_frame())
    assert len(daily) == 3 + 2  # the second day has only new users
    first = daily[daily["day"] == pd.Timestamp("2024-05-02", tz="UTC")].set_index("segment")
    assert first.loc["returning", "ctr"] == 0.3 and first.loc["new", "impressions"] == 2
    assert first.loc["all", "clicks"] == 4


def test_histogram_quantile_interpolates_within_buckets_like_prometheus():
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.9)
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


def test_serving_checks_read_stage_latency_errors_and_429s_from_the_apis_own_metrics():
    metrics = ServingMetrics()  # the serving API's real registry and exposition
    for _ in range(98):
        metrics.observe_recommendation("full", [("rank", "ok", 4.0), ("retrieve", "ok", 30.0)])
    metrics.observe_recommendation("full", [("rank", "ok", 400.0), ("retrieve", "ok", 30.0)])
    for status, n in ((200, 180), (429, 15), (500, 5)):
        for _ in range(n):
            metrics.observe_request("/recommend", "POST", status, 0.01)
    checks = {(c.check, c.subject): c for c in serving_checks(metrics.render().decode(), DEFAULTS)}
    assert checks[("stage_p50_s", "rank")].value <= 0.005 and checks[("stage_p50_s", "rank")].status == STABLE
    assert checks[("stage_p99_s", "retrieve")].value == pytest.approx(0.05, rel=0.05)
    assert checks[("error_rate", "")].value == pytest.approx(5 / 200) and checks[("error_rate", "")].status == ACT
    assert checks[("shed_rate", "")].value == pytest.approx(15 / 200) and checks[("shed_rate", "")].status == ACT


def result() -> MonitoringResult:
    checks = [CheckResult("data", "psi", "item_ctr_7d", 0.31, ACT, 0.1, 0.2),
              CheckResult("model", "ece", "p_click", 0.04, WATCH, 0.03, 0.05),
              CheckResult("product", "ctr", "new", 0.05, INFO)]
    return MonitoringResult(datetime(2024, 5, 2, tzinfo=timezone.utc), datetime(2024, 5, 3, tzinfo=timezone.utc),
                            "m", "3", checks)


def test_results_land_in_the_lake_table_partitioned_by_run_date(tmp_path):
    settings = Settings(home=tmp_path)
    path = write_result(settings, result())
    assert path.parent.name == "dt=2024-05-03" and path.parent.parent.name == "monitoring"
    write_result(settings, result())  # the same window again replaces its file
    back = read_results(settings)
    assert len(back) == 3 and back["model_version"].unique().tolist() == ["3"]
    assert back.set_index("check").loc["psi", ["subject", "value", "status", "act"]].tolist() == \
        ["item_ctr_7d", 0.31, ACT, 0.2]


def test_prometheus_text_carries_each_check_its_status_and_the_alert_count():
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(render(result()).decode()) for s in f.samples}
    psi = (("check", "psi"), ("layer", "data"), ("subject", "item_ctr_7d"))
    assert samples[("eightbox_monitoring_value", psi)] == 0.31
    assert samples[("eightbox_monitoring_status", psi)] == 2
    assert samples[("eightbox_monitoring_alerts", ())] == 1


def test_a_window_that_ends_before_it_starts_is_refused_before_anything_is_read(tmp_path):
    from eightbox.monitoring.job import MonitoringError, run_monitoring

    settings = Settings(home=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(MonitoringError, match="must end after it starts"):
        run_monitoring(settings, datetime(2024, 5, 3, tzinfo=timezone.utc), datetime(2024, 5, 2, tzinfo=timezone.utc))
