"""System-layer checks: the serving API's own metrics, the archiver's consumer lag, feature freshness.

- From a scrape of the API's ``/metrics`` (serving/metrics.py): p50 / p99 of each funnel stage
  (``eightbox_funnel_stage_duration_seconds``, interpolated within histogram buckets the way
  Prometheus' ``histogram_quantile`` does), the 5xx share and the 429 share of answered requests
  (``eightbox_http_requests_total`` by status). These counters run since the server started: one
  scrape gives lifetime figures; windowed rates are for Prometheus, which scrapes the same text.
- ``consumer_lag``: events on the contract's topics that the archiver group has not committed
  (end offset minus committed offset, summed over partitions; a partition never committed counts
  from its earliest offset).
- ``feature_staleness_s``: per streaming feature table, the window end minus the newest
  ``event_timestamp`` the pusher wrote to its offline history at or before the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from eightbox.settings import Settings

from .results import CheckResult, judged
from .thresholds import Threshold

LAYER = "system"
STAGE_HISTOGRAM = "eightbox_funnel_stage_duration_seconds"
REQUESTS = "eightbox_http_requests"


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile from cumulative (upper bound, count) buckets, linear within a bucket;
    NaN without observations. A quantile in the +Inf bucket is the largest finite bound."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


def serving_checks(metrics_text: str, th: Mapping[str, Threshold]) -> list[CheckResult]:
    """Stage latency quantiles, error and 429 shares from one /metrics scrape."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    answered, errors, shed = 0.0, 0.0, 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if family.name == STAGE_HISTOGRAM and s.name.endswith("_bucket"):
                buckets.setdefault(s.labels["stage"], []).append((float(s.labels["le"]), s.value))
            elif family.name == REQUESTS and s.name.endswith("_total"):
                status = int(s.labels.get("status", "0"))
                answered += s.value
                errors += s.value if status >= 500 else 0.0
                shed += s.value if status == 429 else 0.0
    out = []
    for stage, bs in sorted(buckets.items()):
        n = int(max(c for _, c in bs))
        for q, name in ((0.5, "stage_p50_s"), (0.99, "stage_p99_s")):
            out.append(judged(LAYER, name, stage, histogram_quantile(q, bs), th[name], f"{n} observations"))
    rate = (lambda k: k / answered) if answered else (lambda k: float("nan"))
    out.append(judged(LAYER, "error_rate", "", rate(errors), th["error_rate"],
                      f"{errors:.0f} of {answered:.0f} requests"))
    out.append(judged(LAYER, "shed_rate", "", rate(shed), th["shed_rate"], f"{shed:.0f} of {answered:.0f} requests"))
    return out


def scrape(url: str, timeout: float = 5.0) -> str:
    """GET `url` (a /metrics endpoint) as text."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def consumer_lag(settings: Settings, group: str, topics: Mapping[str, int]) -> int:
    """Events on `topics` ({name: partitions}, from the contract) not yet committed by `group`."""
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, client_id="eightbox-monitoring",
                             request_timeout_ms=10_000)
    try:
        parts = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        committed = _retrying(lambda: admin.list_group_offsets({group: parts}).get(group, {}))
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in parts})
        starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in parts})
    finally:
        admin.close()
    lag = 0
    for tp in parts:
        done = committed.get(tp)
        at = done.offset if done is not None and done.offset >= 0 else starts[tp].offset
        lag += max(ends[tp].offset - at, 0)
    return lag


def _retrying(call, attempts: int = 20, pause_s: float = 0.5):
    """`call()`, again after a retriable Kafka error (e.g. no group coordinator yet on a fresh broker)."""
    from kafka.errors import KafkaError

    for attempt in range(attempts):
        try:
            return call()
        except KafkaError as e:
            if not getattr(e, "retriable", False) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def feature_staleness(settings: Settings, tables: list[str], end: datetime) -> dict[str, float]:
    """Seconds from the newest offline-history row at or before `end` to `end`, per table (NaN: none).
    Reads only the day partitions of `end` and the day before."""
    end = pd.Timestamp(end)
    out = {}
    for table in tables:
        newest = None
        for day in (end - timedelta(days=1), end):
            folder = settings.features_dir / table / f"dt={day:%Y-%m-%d}"
            for path in folder.glob("*.parquet"):
                ts = pd.to_datetime(pq.read_table(path, columns=["event_timestamp"]).column(0).to_pandas(), utc=True)
                ts = ts[ts <= end]
                if len(ts) and (newest is None or ts.max() > newest):
                    newest = ts.max()
        out[table] = (end - newest).total_seconds() if newest is not None else float("nan")
    return out
