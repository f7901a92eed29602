"""One monitoring run: `run_monitoring(settings, start, end)` checks the window [start, end) in four
layers against the registry's champion, stores the results and exports them.

Inputs: the window's logged impressions from the lake (their ``features`` are exactly what the
ranker saw), clicks and engagements (labels: `training.labels.attach_labels`, only impressions at
least ``monitoring_label_delay_s`` older than the end, whose labels are final), item metadata for
the catalog, shadow-scoring events (challenger beside champion), the champion's training
reference and model from MLflow (the model rescores the logged vectors: impressions log the value
score, the reference and ECE are about P(click)), and for the system layer a scrape of the
serving /metrics, the archiver group's consumer lag and the streaming feature history. Window
boundaries are arguments only: nothing here reads the clock, so the closed-loop demo can monitor
simulated days.

Outputs: a `MonitoringResult`, a file in the `monitoring` lake table and the Prometheus textfile.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from eightbox.settings import Settings

from . import concept_checks, data_checks, model_checks, product_metrics, system_checks
from .results import CheckResult, MonitoringResult, judged
from .thresholds import INFO, NO_DATA, Threshold, thresholds

log = logging.getLogger(__name__)


class MonitoringError(RuntimeError):
    """Monitoring cannot run as asked (no champion, no reference, a bad window); the message says why."""


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    reference: dict
    model: Any  # the pyfunc model: predict(frame of features) -> frame with the reference's score columns


def load_champion(settings: Settings, model_name: str, dst_path: str | None = None) -> Champion:
    """The champion's model (downloaded into `dst_path`, default a new temporary folder) and the
    training reference logged with the same run."""
    from eightbox.training import registry

    version = registry.champion_version(settings, model_name)
    if version is None:
        raise MonitoringError(f"{model_name} has no champion in the registry at {settings.mlflow_uri}: "
                              "train and promote a model first")
    model = registry.load_by_alias(settings, registry.CHAMPION, model_name=model_name, dst_path=dst_path)
    run_id = model.metadata.run_id
    reference = registry.load_reference(settings, run_id)
    if not isinstance(reference, dict) or "features" not in reference:
        raise MonitoringError(f"{model_name} v{version} (run {run_id}) has no feature reference to compare against")
    return Champion(version, run_id, reference, model)


def _events(settings: Settings, event_type: str) -> pd.DataFrame:
    from eightbox.ingest.lake import read_events
    from eightbox.training.labels import events_frame

    return events_frame(read_events(settings.lake_dir, event_type))


def _between(df: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    return df[(df["event_time"] >= start) & (df["event_time"] < end)].reset_index(drop=True)


def live_frame(impressions: pd.DataFrame, reference: dict, items: pd.DataFrame) -> pd.DataFrame:
    """One row per impression: its logged features (absent = NaN), plus each categorical column
    of the reference that items carry (e.g. the item's category as published by then)."""
    live = pd.DataFrame(list(impressions["features"]), index=impressions.index).astype("float64")
    latest = items.sort_values("event_time").drop_duplicates("item_id", keep="last").set_index("item_id")
    for column in reference.get("categorical", {}):
        if column in latest.columns:
            live[column] = impressions["item_id"].map(latest[column]).astype(object)
    return live


def _scores(champion: Champion, live: pd.DataFrame) -> dict[str, np.ndarray]:
    """The champion's scores of the logged vectors, per score name the reference has."""
    features = list(champion.reference["features"])
    pred = champion.model.predict(live.reindex(columns=features).astype("float64"))
    return {name: pred[name].to_numpy(dtype=float) for name in champion.reference.get("scores", {}) if name in pred}


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows] with NaN where a row is NaN (not found)."""
    found = np.isfinite(rows)
    out = np.full(len(rows), np.nan)
    out[found] = values[rows[found].astype(int)]
    return out


def _labelled(impressions, clicks, engagements, as_of, settings: Settings) -> pd.DataFrame:
    from eightbox.training.labels import attach_labels

    window = pd.Timedelta(seconds=settings.monitoring_attribution_window_s)
    delay = pd.Timedelta(seconds=settings.monitoring_label_delay_s)
    return attach_labels(impressions, clicks, engagements, window, as_of, delay)


def _logged_vectors(impressions: pd.DataFrame) -> pd.Series:
    """Each impression's logged feature vector, by event id."""
    unique = impressions.drop_duplicates("event_id")
    return pd.Series(unique["features"].to_numpy(), index=unique["event_id"].astype(str))


def _with_logged(labelled: pd.DataFrame, logged: pd.Series, features: list[str]) -> pd.DataFrame:
    """The matured impressions the ranker scored (`logged`: `_logged_vectors`), with each of
    `features` as it logged them (NaN: absent)."""
    vectors = labelled["example_id"].astype(str).map(logged)
    scored = vectors.map(lambda v: isinstance(v, dict) and bool(v)).to_numpy(dtype=bool)
    out = labelled.loc[scored, ["click", "position"]].reset_index(drop=True)
    for name in features:
        out[name] = [v.get(name, np.nan) for v in vectors[scored]]
    return out


def _kpis(settings: Settings, lake: dict[str, pd.DataFrame], start: pd.Timestamp, end: pd.Timestamp):
    """(KPIs, matured labelled impressions with their segment) of the window [start, end)."""
    imps = _between(lake["impression_served"], start, end)
    activity = pd.concat([lake["item_clicked"][["user_id", "event_time"]],
                          lake["item_engaged"][["user_id", "event_time"]]], ignore_index=True)
    lookback = pd.Timedelta(days=settings.monitoring_returning_lookback_days)
    returning = product_metrics.returning_users(activity, start, lookback)
    labelled = _labelled(imps, lake["item_clicked"], lake["item_engaged"], end, settings)
    labelled["segment"] = product_metrics.segment_of(labelled["user_id"], returning)
    shown = imps.assign(segment=product_metrics.segment_of(imps["user_id"], returning))
    published = lake["item_published"]
    catalog = published.loc[published["event_time"] <= end, "item_id"].nunique()
    return product_metrics.kpis(labelled, shown, catalog), labelled


def _system(settings: Settings, end: pd.Timestamp, th: dict[str, Threshold], metrics_url: str | None,
            kafka_lag: bool) -> list[CheckResult]:
    from eightbox.features.specs import STREAMING
    from eightbox.ingest.schema import TOPICS

    out: list[CheckResult] = []
    layer = system_checks.LAYER
    if metrics_url:
        try:
            out += system_checks.serving_checks(system_checks.scrape(metrics_url), th)
        except OSError as e:
            out.append(CheckResult(layer, "serving_scrape", metrics_url, float("nan"), NO_DATA, detail=str(e)))
    if kafka_lag:
        try:
            lag = system_checks.consumer_lag(settings, settings.archiver_group,
                                             {t.name: t.partitions for t in TOPICS.values()})
            out.append(judged(layer, "consumer_lag", settings.archiver_group, lag, th["consumer_lag"]))
        except Exception as e:  # kafka-python raises many types; an unreachable broker is a no-data result
            out.append(CheckResult(layer, "consumer_lag", settings.archiver_group, float("nan"), NO_DATA,
                                   detail=f"{type(e).__name__}: {e}"))
    tables = sorted({s.table for s in STREAMING})
    for table, seconds in system_checks.feature_staleness(settings, tables, end).items():
        out.append(judged(layer, "feature_staleness_s", table, seconds, th["feature_staleness_s"],
                         "" if np.isfinite(seconds) else "no streamed feature values in the day before the end"))
    return out


def default_metrics_url(settings: Settings) -> str:
    """`monitoring_metrics_url`, else the serving API's /metrics."""
    from eightbox.deploy.serving_service import base_url

    return settings.monitoring_metrics_url or f"{base_url(settings)}/metrics"


def run_monitoring(settings: Settings, start: datetime, end: datetime, *, model_name: str | None = None,
                   metrics_url: str | None = None, kafka_lag: bool = True, write: bool = True,
                   log_alerts: bool = True) -> MonitoringResult:
    """Check [start, end) in all four layers (see the module docstring); `metrics_url` None skips
    the serving scrape, `kafka_lag` False the lag check, `write` False the lake and textfile,
    `log_alerts` False the warning per alert (for callers that report them their own way)."""
    from eightbox.training.labels import utc

    start, end = utc(start), utc(end)
    if end <= start:
        raise MonitoringError(f"the window must end after it starts: {start} .. {end}")
    model_name = model_name or settings.serving_model_name
    th = thresholds(settings.monitoring_threshold_overrides)
    lake = {et: _events(settings, et) for et in ("impression_served", "item_clicked", "item_engaged", "item_published",
                                                 "shadow_scored")}
    imps = _between(lake["impression_served"], start, end)
    # Lower rungs of the degradation ladder log no features (no ranker scored them): counting them
    # as nulls would turn every degraded minute into a data alert, so data and model checks skip them.
    scored = imps[imps["features"].map(bool).astype(bool)].reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="eightbox-monitoring-") as tmp:  # the bundle, gone after scoring
        champion = load_champion(settings, model_name, tmp)
        ref = champion.reference
        live = live_frame(scored, ref, lake["item_published"])
        scores = _scores(champion, live) if len(scored) else {}

    checks = [CheckResult("data", "impressions", "", float(len(imps)), INFO if len(imps) else NO_DATA,
                          detail=f"impressions logged in the window, {len(scored)} scored by the ranker")]
    if len(scored):
        checks += data_checks.data_checks(ref, live, th)
    for name, summary in ref.get("scores", {}).items():
        checks.append(model_checks.score_psi_check(name, summary, scores.get(name, np.array([])), th["score_psi"]))
    checks += model_checks.shadow_checks(_between(lake["shadow_scored"], start, end), th["shadow_score_psi"])

    current, labelled = _kpis(settings, lake, start, end)
    previous, labelled_before = _kpis(settings, lake, start - (end - start), start)
    checks += product_metrics.product_checks(current, previous, th["kpi_drop"])
    tastes = [f for f in concept_checks.TASTE_FEATURES if f in ref["features"]]  # those the champion reads
    logged = _logged_vectors(lake["impression_served"])
    checks += concept_checks.concept_checks(_with_logged(labelled, logged, tastes),
                                            _with_logged(labelled_before, logged, tastes), th["concept_drift"], tastes)
    # Each matured impression's score; NaN for those the ranker did not score.
    by_id = pd.Series(np.arange(len(scored)), index=scored["event_id"].astype(str))
    rows = by_id.reindex(labelled["example_id"]).to_numpy()
    calibration = pd.DataFrame()
    # The ranker scores every candidate as if shown first (position fixed at 0 when serving), so its
    # P(click) is calibrated against what happened at position 0; lower slots are seen less often.
    top = (labelled["position"].to_numpy() == 0) if "position" in labelled else np.ones(len(labelled), bool)
    for name in ref.get("scores", {}):
        p = _take(scores[name], rows) if name in scores else np.full(len(labelled), np.nan)
        checks.append(model_checks.ece_check(name, labelled["click"].to_numpy()[top], p[top], th["ece"]))
        if name in scores and top.any():
            calibration = pd.concat([calibration, model_checks.calibration_curve(
                labelled["click"].to_numpy()[top], p[top]).assign(score=name)], ignore_index=True)
    checks += _system(settings, end, th, metrics_url, kafka_lag)

    score_bins = pd.concat([model_checks.score_bins(n, s, scores.get(n, np.array([])))
                            for n, s in ref.get("scores", {}).items()] or [pd.DataFrame()], ignore_index=True)
    result = MonitoringResult(start, end, model_name, champion.version, checks,
                              score_bins=score_bins, daily=product_metrics.daily_ctr(labelled), calibration=calibration)
    if write:
        from .lake_table import write_result
        from .prometheus import write_textfile

        write_result(settings, result)
        write_textfile(settings, result)
    for alert in result.alerts if log_alerts else ():
        log.warning("monitoring alert: %s", alert.alert)
    return result
