"""The monitoring job end to end on real components: two simulated days of traffic published to the
real Kafka and archived into the lake by the real archiver, a champion with its training reference
in the real MLflow registry, a streamed feature history written by the project's offline writer;
then `run_monitoring` over the second day, and `eightbox monitor` rendering the report.

Planted on the checked day: 30% of scored impressions lose feature ``f1`` (a null spike), and a
tenth of the catalog is published in a category the training data never had. A tenth of the lists
on both days came from a lower rung (no features logged): not a null spike. The click world is the one the
champion learnt, so its calibration holds. Dates are in 2019, far from any other test's events.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eightbox.deploy.monitoring_service import heartbeat, monitoring
from eightbox.deploy.supervisor import Supervisor
from eightbox.features.store import write_offline
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import (TOPICS, ImpressionServed, ItemClicked, ItemEngaged, ItemPublished,
                                    ShadowScored)
from eightbox.monitoring.job import MonitoringError, run_monitoring
from eightbox.monitoring.lake_table import read_results
from eightbox.monitoring.prometheus import textfile_path
from eightbox.monitoring.service import report_path
from eightbox.monitoring.system_checks import consumer_lag
from eightbox.monitoring.thresholds import ACT, NO_DATA, STABLE, WATCH
from eightbox.settings import REPO_ROOT
from eightbox.training import registry
from eightbox.training.bundle import save_component, write_bundle
from eightbox.training.reference import training_reference

from ..unit.tiny_ranker import FEATURES, TinyRanker
from .conftest import eightbox_bin

DAY = datetime(2019, 7, 2, tzinfo=timezone.utc)  # the checked window is [DAY, DAY + 1 day)
WORLD = np.array([2.0, -1.0, 0.5])
BIAS = -2.5  # about one click in eight
CATEGORIES = [f"c{n}" for n in range(5)]


def p_click(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ WORLD + BIAS)))


def champion(settings, tmp_path, name: str) -> dict:
    """Fit the tiny ranker on the click world, register it with its reference, make it champion."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8000, 3))
    train = pd.DataFrame(x, columns=FEATURES).assign(y=(rng.random(8000) < p_click(x)).astype(int),
                                                     category=rng.choice(CATEGORIES, 8000))
    ranker = TinyRanker.fit(train, C=100.0)
    reference = training_reference(train, FEATURES, {"score": ranker.predict(train)["score"].to_numpy()})
    bundle = tmp_path / "bundle"
    write_bundle(bundle, name=name, components={"ranker": save_component(bundle, "ranker", ranker)},
                 metadata={"encoder_version": "enc-1", "features": FEATURES})
    run_id = registry.log_training_run(
        settings, experiment="monitoring-tests", params={}, metrics={"auc": 0.8}, dataset={"version": "t"},
        feature_service="ranker_v1", code_version="test", reference=reference, bundle_dir=bundle, model_name=name)
    registry.promote(settings, registry.version_of_run(settings, run_id), force=True, model_name=name)
    return reference


def traffic(prefix: str) -> tuple[list, dict]:
    """Items, then two days of impressions with clicks (5 min later) and engagements; and what the
    test expects: the checked day's matured CTR per segment, and the returning users."""
    rng = np.random.default_rng(1)
    events: list = []
    items = {f"{prefix}-i{n}": CATEGORIES[n % 5] if n < 54 else "c-new" for n in range(60)}
    for n, (item, cat) in enumerate(items.items()):
        published = DAY - timedelta(days=5) if cat != "c-new" else DAY
        events.append(ItemPublished(event_id=f"{prefix}-pub{n}", event_time=published, item_id=item,
                                    creator_id="k", category=cat))
    old_users = [f"{prefix}-u{n}" for n in range(150)]
    new_users = [f"{prefix}-new{n}" for n in range(60)]
    shown = {"new": [0, 0], "returning": [0, 0]}  # checked day, matured: [impressions, clicks]
    clicked_before: set[str] = set()
    for day in (DAY - timedelta(days=1), DAY):
        checked = day == DAY
        catalog = list(items) if checked else [i for i, c in items.items() if c != "c-new"]
        for r in range(250):
            at = day + timedelta(seconds=float(rng.uniform(0, 86_399)))
            user = str(rng.choice(old_users + new_users if checked else old_users))
            request = f"{prefix}-r{day:%d}-{r}"
            x = rng.normal(size=(10, 3))
            clicks = rng.random(10) < p_click(x)
            degraded = r % 10 == 9  # a lower rung answered: nothing scored, no features logged
            slate = [str(i) for i in rng.choice(catalog, 10, replace=False)]
            if checked and not degraded:  # a challenger shadow-scored beside the champion, ranking alike
                p = p_click(x).tolist()
                events.append(ShadowScored(
                    event_id=f"{request}-shadow", event_time=at, request_id=request, user_id=user,
                    champion_version="1", challenger_version="2", champion_item_ids=slate,
                    champion_scores=[*p[:-1], None], challenger_item_ids=slate,
                    challenger_scores=[v * 1.02 for v in p], champion_latency_ms=5.0, challenger_latency_ms=6.0))
            for pos, item in enumerate(slate):
                features = {} if degraded else dict(zip(FEATURES, x[pos].tolist()))
                if checked and features and rng.random() < 0.3:
                    del features["f1"]  # the planted null spike
                events.append(ImpressionServed(event_id=f"{request}-{pos}", event_time=at, request_id=request,
                                               user_id=user, item_id=str(item), position=pos, surface="home",
                                               features=features, score=float(p_click(x[pos:pos + 1])[0])))
                if clicks[pos]:
                    events.append(ItemClicked(event_id=f"{request}-c{pos}", event_time=at + timedelta(minutes=5),
                                              user_id=user, item_id=str(item), request_id=request, position=pos))
                    if rng.random() < 0.3:
                        events.append(ItemEngaged(event_id=f"{request}-e{pos}", kind="watch", value=0.5,
                                                  event_time=at + timedelta(minutes=20), user_id=user,
                                                  item_id=str(item), request_id=request))
                if checked and at <= DAY + timedelta(hours=22):  # labels final 2 h before the end
                    seg = shown["returning" if user in clicked_before else "new"]
                    seg[0] += 1
                    seg[1] += int(clicks[pos])
            if not checked and clicks.any():
                clicked_before.add(user)
    return events, {"shown": shown, "returning": clicked_before}


@pytest.fixture
def settings(lake_settings):
    return lake_settings.model_copy(update={"archiver_flush_seconds": 0.5})


def test_monitoring_a_day_of_real_traffic_flags_the_planted_faults_and_nothing_else(settings, tmp_path):
    name = f"monitored-{uuid.uuid4().hex[:8]}"
    reference = champion(settings, tmp_path, name)
    prefix = f"mon-{uuid.uuid4().hex[:6]}"
    events, expected = traffic(prefix)
    with EventProducer(settings) as producer:
        for event in events:
            producer.publish(event)
    topics = {t.name: t.partitions for t in TOPICS.values()}
    assert consumer_lag(settings, settings.archiver_group, topics) >= len(events)  # nothing archived yet
    LakeArchiver(settings).run(idle_exit_s=3)
    # The streamed feature history: item_session last written 10 minutes before the end.
    write_offline(settings, "item_session", pd.DataFrame(
        {"item_id": [f"{prefix}-i1"], "event_timestamp": [DAY + timedelta(hours=23, minutes=50)],
         "item_clicks_15m": [1], "item_impressions_15m": [4]}), "monitoring-test")

    result = run_monitoring(settings, DAY, DAY + timedelta(days=1), model_name=name,
                            metrics_url="http://127.0.0.1:9/metrics")

    by = {(c.layer, c.check, c.subject): c for c in result.checks}
    assert sorted((c.layer, c.check, c.subject) for c in result.alerts) == [
        ("data", "null_rate_increase", "f1"), ("data", "unseen_category", "category")], \
        [c.alert for c in result.alerts]
    assert by[("data", "null_rate_increase", "f1")].value == pytest.approx(0.3, abs=0.03)
    assert by[("data", "unseen_category", "category")].value == pytest.approx(0.1, abs=0.03)
    assert by[("data", "impressions", "")].value == 2500
    assert "2250 scored by the ranker" in by[("data", "impressions", "")].detail
    assert all(by[("data", "psi", f)].value < 0.1 for f in FEATURES)
    assert not [c for c in result.checks if c.check == "schema"]

    # Model: the champion rescored the logged vectors (NaN where f1 is missing) against its reference.
    assert by[("model", "score_psi", "score")].value < 0.1
    # ECE is judged on position-0 impressions only (the ranker's P(click) is for the first slot); a day
    # of this traffic has ~140 of them, under the 300 an ECE over 10 bins needs: no data, not a guess.
    ece = by[("model", "ece", "score")]
    assert ece.status == NO_DATA and "< 300" in ece.detail, ece.detail
    shadow = by[("model", "shadow_score_psi", "v2 vs v1")]  # list columns, nulls included, via the lake
    assert shadow.status == STABLE and shadow.detail == "225 shadowed requests, 2250 challenger scores"
    assert reference["scores"]["score"]["shares"] == result.score_bins["reference"].tolist()

    # Product: CTR per segment exactly as the traffic was generated (labels: attribution, label delay).
    shown = expected["shown"]
    for seg in ("new", "returning"):
        assert by[("product", "ctr", seg)].value == pytest.approx(shown[seg][1] / shown[seg][0]), seg
    total = shown["new"][0] + shown["returning"][0]
    assert by[("product", "ctr", "all")].value == pytest.approx((shown["new"][1] + shown["returning"][1]) / total)
    assert by[("product", "coverage", "all")].value == 1.0  # 250 lists of 10 from 60 items: every item shown
    assert math.isfinite(by[("product", "ctr_drop", "all")].value)

    # System: the archiver group has read everything; one streamed table is 10 minutes stale, the
    # other has no history; the serving scrape failed and says so.
    assert by[("system", "consumer_lag", settings.archiver_group)].value == 0
    assert by[("system", "feature_staleness_s", "item_session")].value == 600.0
    assert by[("system", "feature_staleness_s", "item_session")].status == WATCH
    assert by[("system", "feature_staleness_s", "user_category_session")].status == NO_DATA
    assert by[("system", "serving_scrape", "http://127.0.0.1:9/metrics")].status == NO_DATA

    # Outputs: the lake table and the Prometheus textfile.
    stored = read_results(settings)
    assert len(stored) == len(result.checks) and set(stored["model_name"]) == {name}
    assert sorted(stored.loc[stored["status"] == ACT, "subject"]) == ["category", "f1"]
    samples = {s.name: s.value for f in text_string_to_metric_families(textfile_path(settings).read_text())
               for s in f.samples if not s.labels}
    assert samples["eightbox_monitoring_alerts"] == 2


def test_a_model_without_a_champion_is_a_clear_error(settings):
    with pytest.raises(MonitoringError, match="never-registered-.* has no champion"):
        run_monitoring(settings, DAY, DAY + timedelta(days=1), model_name=f"never-registered-{uuid.uuid4().hex[:6]}")


def test_eightbox_monitor_writes_the_report_and_prints_the_alerts(settings, tmp_path):
    name = f"monitored-cli-{uuid.uuid4().hex[:8]}"
    champion(settings, tmp_path, name)
    events, _ = traffic(f"cli-{uuid.uuid4().hex[:6]}")
    with EventProducer(settings) as producer:
        for event in events:
            producer.publish(event)
    LakeArchiver(settings).run(idle_exit_s=3)

    report = tmp_path / "report.html"
    env = {**settings.child_env(), "PYTHONPATH": str(REPO_ROOT)}  # the bundle's ranker loads from tests/
    done = subprocess.run([eightbox_bin(), "monitor", "--start", f"{DAY:%Y-%m-%d}", "--end",
                           f"{DAY + timedelta(days=1):%Y-%m-%d}", "--model", name, "--no-scrape",
                           "--report", str(report)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 alerts" in done.stdout and "ALERT data/null_rate_increase[f1]" in done.stdout
    page = report.read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    assert "data/unseen_category[category]" in page
    stored = next((settings.lake_dir / "monitoring").glob("dt=2019-07-03/*.parquet"))
    assert pq.read_schema(stored).names[:4] == ["window_start", "window_end", "model_name", "model_version"]


def test_the_supervised_service_runs_the_checks_on_schedule_and_beats(settings, tmp_path):
    name = f"monitored-svc-{uuid.uuid4().hex[:8]}"
    champion(settings, tmp_path, name)
    svc = settings.model_copy(update={"serving_model_name": name, "monitoring_interval_s": 600.0,
                                      "monitoring_metrics_url": "http://127.0.0.1:9/metrics"})
    supervisor = Supervisor(svc, services={"monitoring": monitoring(svc)})
    supervisor.up(progress=lambda *_: None)
    try:
        deadline = time.monotonic() + 240
        while (heartbeat(svc) or {}).get("last_end") is None:
            assert (heartbeat(svc) or {}).get("error") is None, heartbeat(svc)
            assert time.monotonic() < deadline, f"no run finished: {heartbeat(svc)}"
            time.sleep(1)
        assert [s.state for s in supervisor.status()] == ["healthy"]
        assert report_path(svc).read_text(encoding="utf-8").count("data:image/png;base64,") == 4
        stored = read_results(svc)  # this test's lake holds no traffic: a run of no-data checks
        assert stored.loc[stored["check"] == "impressions", "status"].tolist() == [NO_DATA]
        assert heartbeat(svc)["alerts"] == int((stored["status"] == ACT).sum())
    finally:
        supervisor.down(progress=lambda *_: None)
    assert heartbeat(svc) is None  # a stopped service removes its heartbeat
