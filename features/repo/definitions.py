"""Feast definitions for every feature table, generated from `features/specs.py` (nothing is listed twice).

Feast imports every ``.py`` file in this folder, so it holds definitions only. `definitions(settings)`
builds them for one `Settings` (the test suites and `features.store.apply` call it); the module-level
names below are the same objects for the environment's settings, so the Feast CLI also finds them
(``feast -c features/repo -f <home>/feast/feature_store.yaml plan``).

- entities: user, item, creator, category (string join keys `user_id`, `item_id`, `creator_id`, `category`);
- one FeatureView per table in `specs.TABLE_KEYS`, over ``<features_dir>/<table>/dt=YYYY-MM-DD/*.parquet``;
  the streaming tables get a PushSource whose batch source is that same folder;
- versioned FeatureServices: a model version pins the service it was trained with, and a change of its
  feature list is a new service name (``ranker_v2``), never an edit of ``ranker_v1``.

TTL: none for the daily and last-engaged tables (a training row sees the latest value before its
label time however old, as the online store, which keeps the latest value per key, serves it). The
session counts' views have `specs.current_for` (two slides): a row older than that is no count of
the last 15 or 30 minutes. Feast drops such rows from the offline join (`point_in_time` then reads
the count as 0); Feast's online read ignores TTL, so `features.online.OnlineReader` applies the
same rule against the stream's own clock.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String

from eightbox.features import specs
from eightbox.settings import Settings, get_settings

STREAMING_TABLES = ("user_category_session", "item_session", "user_recent")
"""Tables the Flink job also updates live, through a PushSource named `push_source_name(table)`."""

ENTITY_OF_KEY = {"user_id": "user", "item_id": "item", "creator_id": "creator", "category": "category"}

FEATURE_SERVICES: dict[str, tuple[str, ...]] = {
    # every numeric feature of the user, the user × category, the item and its creator
    "ranker_v1": ("user_daily", "user_category_daily", "item_daily", "creator_daily",
                  "user_category_session", "item_session"),
    # the same views, with a published item that has no item_daily row yet read as zero counts
    # rather than missing (features/unseen_items.py): the ranker's service since that change
    "ranker_v2": ("user_daily", "user_category_daily", "item_daily", "creator_daily",
                  "user_category_session", "item_session"),
    # the user's recent history (retrieval's query side)
    "user_history_v1": ("user_recent",),
}


def push_source_name(table: str) -> str:
    return f"{table}_push"


def feature_dtype(name: str):
    """Feast type of a feature column: counts are Int64, derived columns Float64, the history a list."""
    if name == "last_engaged_items":
        return Array(String)
    if any(name in cols for cols in specs.DERIVED.values()):
        return Float64
    return Int64


def definitions(settings: Settings) -> dict[str, object]:
    """Every Feast object of the repository, by a Python-safe name, for `settings`' lake."""
    entities = {key: Entity(name=name, join_keys=[key], value_type=ValueType.STRING,
                            description=f"{name} ({key})")
                for key, name in ENTITY_OF_KEY.items()}
    out: dict[str, object] = {f"{e.name}_entity": e for e in entities.values()}
    views: dict[str, FeatureView] = {}
    for table, keys in specs.TABLE_KEYS.items():
        batch = FileSource(name=f"{table}_source", path=str(settings.features_dir / table),
                           file_format=ParquetFormat(), timestamp_field=specs.TIMESTAMP,
                           description=f"Parquet history of {table}, partitioned by dt")
        out[f"{table}_source"] = batch
        source = batch
        if table in STREAMING_TABLES:
            source = PushSource(name=push_source_name(table), batch_source=batch)
            out[push_source_name(table)] = source
        schema = [Field(name=k, dtype=String) for k in keys]
        schema += [Field(name=f, dtype=feature_dtype(f)) for f in specs.table_features(table)]
        views[table] = FeatureView(name=table, entities=[entities[k] for k in keys], schema=schema,
                                   source=source, ttl=specs.current_for(table) or timedelta(0), online=True,
                                   tags={"generated_from": "features/specs.py"})
        out[f"{table}_view"] = views[table]
    for name, tables in FEATURE_SERVICES.items():
        out[name] = FeatureService(name=name, features=[views[t] for t in tables])
    return out


globals().update(definitions(get_settings()))
