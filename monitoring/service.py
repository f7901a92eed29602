"""The scheduled monitoring service, `python -m eightbox.monitoring` (supervised, see
deploy/monitoring_service.py).

Every ``monitoring_interval_s`` it runs `run_monitoring` over the last ``monitoring_window_s``
(this scheduler is the only place that reads the clock; the checks take the window as arguments),
writes the HTML report to ``<run_dir>/monitoring.html`` and, at least every `periodic.BEAT_S`, a heartbeat
``<run_dir>/monitoring.heartbeat`` (JSON: time, pid, last window end, alerts, last error). A run
that fails (no champion yet, MLflow briefly away) is logged and retried at the next interval.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from eightbox.periodic import run_periodic
from eightbox.settings import Settings

from .job import default_metrics_url, run_monitoring

log = logging.getLogger("eightbox.monitoring")


def heartbeat_path(settings: Settings) -> Path:
    return settings.run_dir / "monitoring.heartbeat"


def report_path(settings: Settings) -> Path:
    return settings.run_dir / "monitoring.html"


def run_once(settings: Settings, end: datetime) -> dict:
    """One scheduled run over the window ending at `end`; returns the heartbeat state it leaves."""
    from .report import write_report  # matplotlib: loaded by the service, not by whoever imports this

    start = end - timedelta(seconds=settings.monitoring_window_s)
    try:
        result = run_monitoring(settings, start, end, metrics_url=default_metrics_url(settings))
    except Exception as e:  # the service outlives a failed run; the next interval tries again
        log.warning("monitoring run for %s .. %s failed: %s: %s", start, end, type(e).__name__, e)
        return {"last_end": None, "alerts": None, "error": f"{type(e).__name__}: {e}"}
    write_report(result, report_path(settings))
    log.info("monitoring %s .. %s: %d checks, %d alerts", start, end, len(result.checks), len(result.alerts))
    return {"last_end": end.isoformat(), "alerts": len(result.alerts), "error": None}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_periodic(heartbeat_path(settings), settings.monitoring_interval_s,
                 lambda: run_once(settings, datetime.now(timezone.utc)),
                 initial={"last_end": None, "alerts": None, "error": None})
