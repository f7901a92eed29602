"""Training data: feature values as they were known strictly before each example's label time.

The one way to join features onto labelled examples. Each row of `entity_df` carries its label time in
the column `LABEL_TIME`; it gets, per feature view, the latest row with
``event_timestamp < label time`` (the rule in `features/specs.py`) and nothing newer. Feast's own
as-of join keeps rows with ``event_timestamp <= t``; asking it for ``t = label time - 1 ns`` (every
timestamp here is whole nanoseconds) turns that into the strict rule. Session counts lapse
(`specs.current_for`, the views' Feast TTL): with no row current at the label time the count is 0,
as `features.online.OnlineReader` serves it.

There is deliberately no other join here: no "latest value" lookup keyed on ids alone, because a
join without time leaks the future into training (a click's own count, or later ones, in its
features).
"""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import pandas as pd

from eightbox.features.specs import TIMESTAMP, current_for
from eightbox.settings import Settings

__all__ = ["LABEL_TIME", "historical_features"]

LABEL_TIME = "label_timestamp"
"""Column of `entity_df`: when the example's label happened (tz-aware, or naive meaning UTC)."""

_ONE_NS = pd.Timedelta(1, "ns")

Features = Union[str, Sequence[str], "FeatureService"]  # noqa: F821 - feast.FeatureService


def historical_features(settings: Settings, entity_df: pd.DataFrame, features_or_service: Features,
                        *, store=None) -> pd.DataFrame:
    """`entity_df` with the requested features added, as known strictly before each row's `LABEL_TIME`.

    `features_or_service`: a FeatureService or its name (``"ranker_v1"``), or feature references
    ``["item_daily:item_clicks_7d", ...]``. `entity_df` must hold `LABEL_TIME` and the join keys of
    every requested view, and must not hold a column named `event_timestamp` (Feast's join time; it
    is derived here). Rows keep their order and their other columns; a feature with no value before
    the label time is missing (NaN/None). Duplicate rows are fine.
    """
    from eightbox.features.store import get_store

    store = store or get_store(settings)
    features_by_view = _resolve(store, features_or_service)
    views = [v for v, _ in features_by_view]
    if LABEL_TIME not in entity_df.columns:
        raise ValueError(f"entity_df needs a {LABEL_TIME!r} column (the label time of each row): "
                         "features are joined as of that instant, never by key alone")
    if TIMESTAMP in entity_df.columns:
        raise ValueError(f"entity_df must not have an {TIMESTAMP!r} column: the join time is derived "
                         f"from {LABEL_TIME!r}")
    labels = pd.to_datetime(entity_df[LABEL_TIME], utc=True).astype("datetime64[ns, UTC]")
    if labels.isna().any():
        raise ValueError(f"{LABEL_TIME!r} has missing values")
    keys = sorted({k for v in views for k in v.join_keys})
    missing = [k for k in keys if k not in entity_df.columns]
    if missing:
        raise KeyError(f"entity_df lacks the join keys {missing} of the requested features")

    rows = entity_df[keys].copy()
    for k in keys:
        rows[k] = rows[k].astype(str)
    rows[LABEL_TIME] = labels
    # Feast collapses rows with equal keys and time, so ask once per distinct (keys, label time).
    unique = rows.drop_duplicates(ignore_index=True).copy()
    unique[TIMESTAMP] = unique[LABEL_TIME] - _ONE_NS

    result = unique[[*keys, LABEL_TIME]].copy()
    feature_cols: list[str] = []
    for view, names in features_by_view:
        # One Feast call per view, with the view's own distinct (keys, time) rows, and only entities
        # its table has. Feast 0.67's file store (a) dedupes its answer on the join keys seen so far plus
        # the time, so rows of different users for one item at one instant would collapse into one when
        # views with other keys come first, and (b) fails (dask cannot sort the NaT join times) when an
        # entity row matches no feature row at all.
        vkeys = list(view.join_keys)
        asked = unique[[*vkeys, LABEL_TIME, TIMESTAMP]].drop_duplicates(ignore_index=True)
        known = asked.merge(_known_keys(store, view), on=vkeys, how="inner")
        if known.empty:
            got = pd.DataFrame({c: pd.Series(dtype=result[c].dtype) for c in [*vkeys, LABEL_TIME]})
            for n in names:
                got[n] = pd.Series(dtype="float64")
        else:
            with warnings.catch_warnings():  # Feast logs the (shifted) range at microsecond precision
                warnings.filterwarnings("ignore", message="Discarding nonzero nanoseconds")
                got = store.get_historical_features(
                    entity_df=known, features=[f"{view.name}:{n}" for n in names]).to_df()
            got[LABEL_TIME] = pd.to_datetime(got[LABEL_TIME], utc=True).astype("datetime64[ns, UTC]")
        # Rows whose every feature row is newer than the label are absent from Feast's answer: left join.
        result = result.merge(got[[*vkeys, LABEL_TIME, *names]], on=[*vkeys, LABEL_TIME], how="left",
                              validate="many_to_one")
        feature_cols += names

    out = entity_df.copy()
    out = out.drop(columns=[c for c in feature_cols if c in out.columns])
    joined = rows.merge(result, on=[*keys, LABEL_TIME], how="left", validate="many_to_one")
    for c in feature_cols:
        out[c] = joined[c].values
    for view, names in features_by_view:  # a session count with no current row is 0 (specs.current_for)
        if current_for(view.name) is not None:
            for n in names:
                out[n] = out[n].fillna(0)
    return out


def _known_keys(store, view) -> pd.DataFrame:
    """The distinct join-key values present in a view's offline table."""
    import pyarrow.dataset as ds
    from feast.infra.offline_stores.file_source import FileSource

    source = view.batch_source
    path = FileSource.get_uri_for_file_path(repo_path=store.config.repo_path, uri=source.file_options.uri)
    keys = list(view.join_keys)
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(columns=keys)
    return table.to_pandas().astype(str).drop_duplicates(ignore_index=True)


def _resolve(store, features_or_service) -> list[tuple[object, list[str]]]:
    """[(FeatureView, feature names)] of a service, its name, or 'view:feature' references."""
    from feast import FeatureService

    if isinstance(features_or_service, str) and ":" not in features_or_service:
        features_or_service = store.get_feature_service(features_or_service)
    if isinstance(features_or_service, FeatureService):
        return [(store.get_feature_view(p.name), [f.name for f in p.features])
                for p in features_or_service.feature_view_projections]
    if isinstance(features_or_service, str):
        features_or_service = [features_or_service]
    refs = list(features_or_service)
    if not refs or any(not isinstance(r, str) or ":" not in r for r in refs):
        raise ValueError("features must be a FeatureService, its name, or 'view:feature' references")
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        view, name = ref.split(":", 1)
        by_view.setdefault(view, []).append(name)
    return [(store.get_feature_view(v), names) for v, names in by_view.items()]
