"""Monitoring results as Prometheus metrics: a registry of gauges, rendered as exposition text and
written as a node-exporter textfile (``<run_dir>/monitoring.prom``) that any scraper can read.

- ``eightbox_monitoring_value{layer,check,subject}``: each check's value (NaN when no data);
- ``eightbox_monitoring_status{layer,check,subject}``: 0 stable, 1 watch, 2 act, -1 no data or info;
- ``eightbox_monitoring_alerts``: how many checks are at ``act``;
- ``eightbox_monitoring_window_end_timestamp_seconds``: the end of the window checked.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from eightbox.periodic import replace_file
from eightbox.settings import Settings

from .results import MonitoringResult
from .thresholds import ACT, STABLE, WATCH

STATUS_CODE = {STABLE: 0, WATCH: 1, ACT: 2}


def registry_of(result: MonitoringResult) -> CollectorRegistry:
    """A fresh registry holding `result`'s gauges (never the process-global one)."""
    r = CollectorRegistry()
    labels = ["layer", "check", "subject"]
    value = Gauge("eightbox_monitoring_value", "Value of each monitoring check", labels, registry=r)
    status = Gauge("eightbox_monitoring_status", "Check status: 0 stable, 1 watch, 2 act, -1 no data/info",
                   labels, registry=r)
    for c in result.checks:
        value.labels(c.layer, c.check, c.subject).set(c.value)
        status.labels(c.layer, c.check, c.subject).set(STATUS_CODE.get(c.status, -1))
    Gauge("eightbox_monitoring_alerts", "Monitoring checks at act", registry=r).set(len(result.alerts))
    Gauge("eightbox_monitoring_window_end_timestamp_seconds", "End of the window last checked",
          registry=r).set(result.end.timestamp())
    return r


def render(result: MonitoringResult) -> bytes:
    return generate_latest(registry_of(result))


def textfile_path(settings: Settings) -> Path:
    return settings.run_dir / "monitoring.prom"


def write_textfile(settings: Settings, result: MonitoringResult) -> Path:
    """Replace the textfile atomically, so a scraper never reads half of it."""
    return replace_file(textfile_path(settings), render(result))
