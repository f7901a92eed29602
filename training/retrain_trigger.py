"""When to retrain and when to run the nightly batch: pure decisions, shared by the closed-loop demo
(simulated days, eightbox/loop.py) and the controller (wall clock, training/controller.py).

- A retrain is due on a concept-drift alert (monitoring's ``concept_drift`` check at ``act``), at once
  whatever the schedule, or when the schedule says so: ``every`` after the last one. The other alerts
  (feature PSI, score PSI, calibration, KPIs) are diagnosis for a person: a feature whose distribution
  moved does not mean the model's answers did (`monitoring/concept_checks.py`).
- With no champion at all (a new platform), the first model is due as soon as the lake holds
  impressions, tried again every `FIRST_MODEL_RETRY` while it fails (too little data, say).
- The nightly batch covers the whole days before today, from the hour it is scheduled at, each day
  once; after an outage it catches up, at most `MAX_CATCH_UP_DAYS` at a time.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

CONCEPT_DRIFT = "concept_drift"  # monitoring/concept_checks.CHECK, without importing the checks
MAX_CATCH_UP_DAYS = 7
FIRST_MODEL_RETRY = timedelta(hours=1)


def retrain_reason(now: datetime, last_retrain: datetime | None, every: timedelta | None,
                   drift_alerts: int) -> str | None:
    """Why to retrain at `now` ("concept drift", "schedule"), or None: not yet. With no retrain on
    record the schedule counts from `now` (the caller records when it started)."""
    if drift_alerts:
        return "concept drift"
    if every and last_retrain is not None and now - last_retrain >= every:
        return "schedule"
    return None


def first_model_due(now: datetime, last_attempt: datetime | None, has_impressions: bool) -> bool:
    """Whether to train a registry's first model now (there is no champion to serve or to monitor)."""
    return has_impressions and (last_attempt is None or now - last_attempt >= FIRST_MODEL_RETRY)


def nightly_days(now: datetime, last_done: date | None, hour: int) -> list[date]:
    """The days the nightly batch should cover at `now`: those after `last_done` up to yesterday, once
    `now` has reached `hour` (UTC); the latest `MAX_CATCH_UP_DAYS` of them. Empty when not due."""
    yesterday = now.date() - timedelta(days=1)
    if now.hour < hour or (last_done is not None and last_done >= yesterday):
        return []
    first = yesterday - timedelta(days=MAX_CATCH_UP_DAYS - 1)
    if last_done is not None:
        first = max(first, last_done + timedelta(days=1))
    return [first + timedelta(days=n) for n in range((yesterday - first).days + 1)]


def drift_alerts(results: pd.DataFrame, model_name: str, since: datetime | None) -> list[str]:
    """Concept-drift alerts (status ``act``) of `model_name` in monitoring results (`lake_table.read_results`)
    whose window ended after `since`, one line each: "<window end> v<version>: <value> (<detail>)"."""
    import pandas as pd

    if results.empty:
        return []
    rows = results[(results["check"] == CONCEPT_DRIFT) & (results["status"] == "act")
                   & (results["model_name"] == model_name)]
    if since is not None:
        rows = rows[pd.to_datetime(rows["window_end"], utc=True) > pd.Timestamp(since)]
    return [f"{pd.Timestamp(r.window_end):%Y-%m-%d %H:%M} v{r.model_version}: drop {r.value:.3f} ({r.detail})"
            for r in rows.itertuples()]
