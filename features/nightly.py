"""The nightly batch: Spark recomputes the daily feature tables of whole days from the lake, then
Feast loads the daily views into the online store. The closed-loop demo runs it after each simulated
day; the controller (training/controller.py) after each real one."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from eightbox.settings import Settings

DAILY_VIEWS = ("user_daily", "user_category_daily", "item_daily", "creator_daily")
MATERIALIZE_DAYS = 31  # the longest daily window (30 days) plus the day itself


def materialize_daily(settings: Settings, last_day: date) -> datetime:
    """Apply the Feast registry and load the daily views online up to the end of `last_day` (returned)."""
    from eightbox.features import store as feature_store
    from eightbox.features.backfill import midnight

    feature_store.apply(settings)
    end = midnight(last_day + timedelta(days=1))
    feature_store.materialize(settings, end - timedelta(days=MATERIALIZE_DAYS), end, views=list(DAILY_VIEWS))
    return end


def run_nightly(settings: Settings, first_day: date, last_day: date) -> dict[str, int]:
    """Backfill the days [first_day, last_day] and materialize the daily views up to the end of
    `last_day`; returns the rows written per table (event_timestamp = end of each day). A lake with no
    event in those days (a stack with no traffic yet) is nothing to do: {}."""
    from eightbox.features.backfill import backfill_days, lake_files, midnight
    from eightbox.ingest.schema import TOPICS

    start, end = midnight(first_day), midnight(last_day + timedelta(days=1))
    if not any(lake_files(settings.lake_dir, event_type, start, end) for event_type in TOPICS):
        return {}
    counts = backfill_days(settings, first_day, last_day)
    materialize_daily(settings, last_day)
    return counts
