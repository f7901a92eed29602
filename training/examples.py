"""Training examples that never see the future, built two ways with the same columns.

- `from_logged_impressions`: the normal path once serving logs impressions. Features are exactly the
  vector the ranker scored with (`ImpressionServed.features`), so training sees what serving saw
  and nothing later; labels from `labels.attach_labels`.
- `from_events_point_in_time`: cold start, or a data set without impressions (MovieLens). Features
  come from the offline feature tables through `features.point_in_time.historical_features`, as
  known strictly before each row's ``event_time``. Rows are labelled impressions, or interactions
  (`ItemEngaged`): each is a positive, with negatives sampled from the items published before it.

Both return `labels.BASE_COLUMNS` followed by the feature service's features (float64, in the
service's order), one row per example, sorted by (event_time, example_id). Sources are DataFrames or
Arrow tables in the lake's columns, or a lake folder read through `ingest.lake.read_events` (which
loads whole event tables into memory: sized for the embedded stack, not a production lake).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from eightbox.ingest.lake import read_events
from eightbox.settings import Settings
from eightbox.training.labels import BASE_COLUMNS, EXAMPLE_ID, Frame, attach_labels, events_frame, utc

__all__ = ["from_events_point_in_time", "from_logged_impressions", "lake_events", "sample_negatives",
           "service_features"]

Source = Union[Path, Mapping[str, Frame]]
"""A lake folder, or {event_type: events} (e.g. ``{"impression_served": df, ...}``)."""


def lake_events(source: Source, event_type: str) -> pd.DataFrame:
    """One event type from a lake folder (via `read_events`) or a mapping, as `labels.events_frame`."""
    if isinstance(source, (str, Path)):
        return events_frame(read_events(Path(source), event_type))
    return events_frame(source[event_type])


def service_features(feature_service: str) -> list[str]:
    """Feature names of a versioned feature service (``"ranker_v1"``), in the service's order."""
    from eightbox.features import specs
    from eightbox.features.repo.definitions import FEATURE_SERVICES

    if feature_service not in FEATURE_SERVICES:
        raise KeyError(f"unknown feature service {feature_service!r}; known: {sorted(FEATURE_SERVICES)}")
    return [f for table in FEATURE_SERVICES[feature_service] for f in specs.table_features(table)]


def _finish(examples: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """BASE_COLUMNS then `features` (absent ones NaN; numeric ones float64), sorted."""
    out = examples.reindex(columns=[*BASE_COLUMNS, *features])
    for f in features:
        if out[f].dtype == object and out[f].isna().all():
            out[f] = out[f].astype("float64")
        elif pd.api.types.is_numeric_dtype(out[f].dtype):
            out[f] = out[f].astype("float64")
    return out.sort_values(["event_time", EXAMPLE_ID], kind="stable", ignore_index=True)


def from_logged_impressions(source: Source, *, as_of: datetime, label_delay: timedelta,
                            attribution_window: timedelta, feature_service: str | None = "ranker_v1") -> pd.DataFrame:
    """Labelled impressions (see `labels.attach_labels`) with the features each impression logged.

    With a `feature_service` the feature columns are that service's (a feature the impression did
    not log is NaN; logged names outside the service are dropped), so the result has the same
    columns as `from_events_point_in_time`; with None, every logged name (sorted).
    """
    labelled = attach_labels(lake_events(source, "impression_served"), lake_events(source, "item_clicked"),
                             lake_events(source, "item_engaged"), attribution_window, as_of, label_delay)
    logged = [c for c in labelled.columns if c not in BASE_COLUMNS]
    examples = _finish(labelled, service_features(feature_service) if feature_service else logged)
    # A ranker_v1 champion logged NaN for never-counted items; a ranker_v2 candidate reads them as
    # serving will score them for it.
    return _unseen_items_counted(examples, lambda: lake_events(source, "item_published"), feature_service)


def from_events_point_in_time(settings: Settings, impressions_or_interactions: Frame | Path,
                              feature_service: str = "ranker_v1", *, items: Frame | None = None,
                              as_of: datetime | None = None, negatives_per_positive: int = 4, seed: int = 0,
                              store=None) -> pd.DataFrame:
    """Examples whose features are joined point-in-time from the offline store (Feast), each as of
    its own ``event_time`` (values stamped strictly before it; see `features.point_in_time`).

    `impressions_or_interactions` is either labelled impressions (a frame with a ``click`` column,
    from `labels.attach_labels`; its logged features are replaced) or interactions: `ItemEngaged`
    events as a frame, or a lake folder to read them from. Interactions with ``event_time > as_of``
    are dropped; each other one is a positive (click = engaged = 1, value = its value: an
    engagement implies the item was chosen) plus `sample_negatives` (seeded).

    The join keys ``category`` and ``creator_id`` are the item's as of each row (its latest
    `ItemPublished` at or before the row's time, as the backfill enriches events) from `items`
    (default: the lake under `settings`). The registry must hold the service (`features.store.apply`).
    """
    data = impressions_or_interactions
    if isinstance(data, (str, Path)):
        data = read_events(Path(data), "item_engaged")
    data = data.to_pandas() if isinstance(data, pa.Table) else data
    published = events_frame(items if items is not None else read_events(settings.lake_dir, "item_published"))
    if "click" in data.columns:
        examples = data[list(BASE_COLUMNS)].copy()
        examples["event_time"] = pd.to_datetime(examples["event_time"], utc=True).astype("datetime64[ns, UTC]")
    elif "features" in data.columns:  # ImpressionServed rows: the logged vector, no labels
        raise ValueError("these look like raw impressions: label them first with labels.attach_labels "
                         "(or use from_logged_impressions), so labels respect the label-delay cutoff")
    else:
        rows = events_frame(data)
        missing = [c for c in ("event_id", "event_time", "user_id", "item_id") if c not in rows.columns]
        if missing:
            raise ValueError(f"interactions need ItemEngaged columns; missing {missing}")
        if as_of is not None:
            rows = rows[rows["event_time"] <= utc(as_of)]
        examples = _interactions(rows, published, negatives_per_positive, seed)
    examples = _with_item_attributes(examples, published)
    features = service_features(feature_service)
    if not examples.empty:
        from eightbox.features.point_in_time import LABEL_TIME, historical_features

        entity = examples[["user_id", "item_id", "category", "creator_id"]].copy()
        entity[LABEL_TIME] = examples["event_time"]
        joined = historical_features(settings, entity, feature_service, store=store)
        for f in features:
            examples[f] = joined[f].to_numpy()
    return _unseen_items_counted(_finish(examples, features), lambda: published, feature_service)


def _unseen_items_counted(examples: pd.DataFrame, published, feature_service: str | None) -> pd.DataFrame:
    """For a service in `ZERO_FOR_UNSEEN_ITEMS`: an item published before the row's time but without
    daily features yet gets zero counts and its age (`features.unseen_items`), as serving fills them.
    `published` gives the ItemPublished events (called only when needed)."""
    from eightbox.features.unseen_items import (ZERO_FOR_UNSEEN_ITEMS, age_days, epoch_ns,
                                                fill_unseen_items)

    if feature_service not in ZERO_FOR_UNSEEN_ITEMS or examples.empty:
        return examples
    events = published()
    first = (events.groupby(events["item_id"].astype(str))["event_time"].min() if not events.empty
             else pd.Series(dtype="datetime64[ns, UTC]"))
    ages = age_days(epoch_ns(examples["item_id"].astype(str).map(first)), epoch_ns(examples["event_time"]))
    return fill_unseen_items(examples, ages)


def _interactions(events: pd.DataFrame, published: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Engagements as positives, plus sampled negatives, in BASE_COLUMNS."""
    value = pd.to_numeric(events["value"], errors="coerce").fillna(1.0) if "value" in events else 1.0
    positives = pd.DataFrame({
        EXAMPLE_ID: events["event_id"].astype(str), "request_id": None,
        "user_id": events["user_id"].astype(str), "item_id": events["item_id"].astype(str),
        "position": pd.array([pd.NA] * len(events), dtype="Int64"), "event_time": events["event_time"],
        "experiment_arm": None, "model_versions": None,
        "click": np.int8(1), "engaged": np.int8(1), "value": value,
    })
    negatives = sample_negatives(positives, published, k, seed)
    out = pd.concat([positives, negatives], ignore_index=True)
    for c, dtype in (("position", "Int64"), ("click", "int8"), ("engaged", "int8"), ("value", "float64")):
        out[c] = out[c].astype(dtype)
    return out


def sample_negatives(positives: pd.DataFrame, items: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Up to `k` negatives per positive row (example_id, user_id, item_id, event_time): items first
    published strictly before the positive's time that the user has not engaged with up to and
    including it (later engagements are unknown at that time, so they do not exclude), each once.
    The result depends only on the rows' content and `seed`, not their order. Negatives get the
    positive's time, ids ``<example_id>~neg<n>``, and labels 0."""
    cols = [EXAMPLE_ID, "user_id", "item_id", "event_time"]
    if k < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {k}")
    first = (items.sort_values(["event_time", "item_id"]).drop_duplicates("item_id")
             if not items.empty else pd.DataFrame({"item_id": [], "event_time": pd.to_datetime([], utc=True)}))
    ids = first["item_id"].astype(str).to_numpy()
    times = first["event_time"].astype("datetime64[ns, UTC]").to_numpy("datetime64[ns]")
    rng = np.random.default_rng(seed)
    seen: dict[str, set[str]] = defaultdict(set)
    out: list[tuple] = []
    ordered = positives[cols].sort_values(["event_time", "user_id", "item_id", EXAMPLE_ID], kind="stable")
    for ex, user, item, t in ordered.itertuples(index=False):
        seen[user].add(item)
        n = int(np.searchsorted(times, t.to_datetime64(), side="left"))  # published strictly before t
        picked: list[str] = []
        if k and n:
            for j in rng.integers(0, n, size=4 * k + 8):  # rejection sampling: exclusions are few
                cand = ids[j]
                if cand not in seen[user] and cand not in picked:
                    picked.append(cand)
                    if len(picked) == k:
                        break
            if len(picked) < k:  # few candidates left: draw the rest from the exact list
                rest = [c for c in ids[:n] if c not in seen[user] and c not in picked]
                picked += [rest[j] for j in rng.permutation(len(rest))[: k - len(picked)]]
        out += [(f"{ex}~neg{m}", user, cand, t) for m, cand in enumerate(picked)]
    neg = pd.DataFrame(out, columns=cols)
    neg["event_time"] = pd.to_datetime(neg["event_time"], utc=True).astype("datetime64[ns, UTC]")
    neg["click"] = neg["engaged"] = np.int8(0)
    neg["value"] = 0.0
    return neg


def _with_item_attributes(examples: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """`examples` plus ``category`` and ``creator_id`` from the item's latest `ItemPublished` at or
    before each row's time (ties: the larger event_id); None before the item was published."""
    out = examples.reset_index(drop=True).copy()
    if published.empty or out.empty:
        out["category"] = out["creator_id"] = None
        return out
    versions = (published[["item_id", "event_time", "event_id", "category", "creator_id"]]
                .assign(item_id=lambda d: d["item_id"].astype(str))
                .sort_values(["event_time", "event_id"]).rename(columns={"event_time": "_valid_from"}))
    left = out[["item_id", "event_time"]].assign(_row=np.arange(len(out))).sort_values("event_time", kind="stable")
    joined = pd.merge_asof(left, versions.drop(columns="event_id"), left_on="event_time",
                           right_on="_valid_from", by="item_id", direction="backward",
                           allow_exact_matches=True).sort_values("_row")
    out["category"] = joined["category"].to_numpy()
    out["creator_id"] = joined["creator_id"].to_numpy()
    return out
