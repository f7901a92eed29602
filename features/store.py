"""The Feast feature store, configured from `Settings` alone: no hand-edited yaml.

`feature_store.yaml` is generated under `settings.feast_dir` (with the file registry beside it); the
repository (definitions only) is `features/repo/`; the online store is Redis at
`settings.redis_address`; the offline store is Feast's file store over the Parquet feature tables.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from eightbox.settings import Settings

REPO_DIR = Path(__file__).resolve().parent / "repo"
ENTITY_KEY_SERIALIZATION_VERSION = 3


def redis_connection_string(address: str) -> str:
    """`redis://[:password@]host:port/db` → Feast's `host:port,db=N[,password=...][,ssl=true]`."""
    url = urlparse(address)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// URL: {address!r}")
    parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}"]
    db = (url.path or "/0").lstrip("/") or "0"
    parts.append(f"db={int(db)}")
    if url.username:
        parts.append(f"username={unquote(url.username)}")
    if url.password:
        parts.append(f"password={unquote(url.password)}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def feast_yaml(settings: Settings) -> str:
    """The feature_store.yaml for `settings` (its only path is the registry, under `feast_dir`)."""
    registry = settings.feast_dir / "registry.db"
    return (
        f"project: {settings.feast_project}\n"
        "provider: local\n"
        "registry:\n"
        "  registry_type: file\n"
        f"  path: {registry}\n"
        "  cache_ttl_seconds: 60\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: \"{redis_connection_string(settings.redis_address)}\"\n"
        "offline_store:\n"
        "  type: file\n"
        f"entity_key_serialization_version: {ENTITY_KEY_SERIALIZATION_VERSION}\n"
    )


def write_config(settings: Settings) -> Path:
    """Write `<feast_dir>/feature_store.yaml` when its content changed (atomically); return its path."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    path = settings.feast_dir / "feature_store.yaml"
    text = feast_yaml(settings)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def get_store(settings: Settings):
    """A `feast.FeatureStore` for `settings` (repository: features/repo; config: generated yaml)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(REPO_DIR), fs_yaml_file=write_config(settings))


def _definitions(settings: Settings) -> list:
    from eightbox.features.repo.definitions import definitions

    return list(definitions(settings).values())


def apply(settings: Settings):
    """Register every definition and delete registered objects no longer defined; returns the store.

    Idempotent: when the registry already holds exactly these definitions (compared without Feast's
    timestamps and project), nothing is written, so the registry file stays byte-for-byte the same."""
    store = get_store(settings)
    objects = _definitions(settings)
    wanted = {_identity(o): _spec(o) for o in objects}
    try:
        registered = [*store.list_entities(), *store.list_feature_views(), *store.list_feature_services(),
                      *store.list_data_sources()]
    except Exception:  # no registry yet
        registered = []
    have = {_identity(o): _spec(o) for o in registered}
    stale = [o for o in registered if _identity(o) not in wanted]
    if have == wanted:
        return store
    store.apply(objects, objects_to_delete=stale, partial=not stale)
    return store


def _identity(obj) -> tuple[str, str]:
    from feast.data_source import DataSource

    return ("DataSource" if isinstance(obj, DataSource) else type(obj).__name__, obj.name)


_VOLATILE = {"meta", "project", "createdTimestamp", "lastUpdatedTimestamp"}


def _spec(obj) -> dict:
    """An object's definition as a plain dict, without what the registry stamps on it."""
    from google.protobuf.json_format import MessageToDict

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    proto = obj.to_proto()
    return strip(MessageToDict(proto.spec if hasattr(proto, "spec") else proto))


def materialize(settings: Settings, start: datetime, end: datetime, views: list[str] | None = None):
    """Load the latest value per entity with `start <= event_timestamp <= end` into Redis.
    Returns the store."""
    store = get_store(settings)
    store.materialize(start_date=_utc(start), end_date=_utc(end), feature_views=views)
    return store


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


# --- the offline layout, written from Python (the pusher, tests, the bench) --------------------------

def offline_schema(settings: Settings, table: str):
    """Arrow schema of a feature table's files: the schema of a file already there (so files written
    by Spark and by Python agree), else the canonical one: string keys, `event_timestamp` as
    timestamp[us, UTC], Int64 counts, Float64 derived values, list<string> histories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eightbox.features import specs
    from eightbox.features.repo.definitions import feature_dtype

    for existing in sorted((settings.features_dir / table).glob("dt=*/*.parquet"))[:1]:
        schema = pq.read_schema(existing)
        return pa.schema([f for f in schema if f.name != "dt"])
    arrow = {"Int64": pa.int64(), "Float64": pa.float64(), "Array(String)": pa.list_(pa.string())}
    fields = [pa.field(k, pa.string()) for k in specs.TABLE_KEYS[table]]
    fields.append(pa.field(specs.TIMESTAMP, pa.timestamp("us", tz="UTC")))
    fields += [pa.field(f, arrow[str(feature_dtype(f))]) for f in specs.table_features(table)]
    return pa.schema(fields)


def write_offline(settings: Settings, table: str, df, name: str) -> list[Path]:
    """Append rows to the feature table in its layout, `<features_dir>/<table>/dt=YYYY-MM-DD/<name>.parquet`
    (one file per UTC day of `event_timestamp`), each written atomically (hidden temp file, fsync,
    rename). Writing the same `name` again replaces that file, so a retried batch adds no duplicates."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eightbox.features import specs

    schema = offline_schema(settings, table)
    df = df.copy()
    df[specs.TIMESTAMP] = pd.to_datetime(df[specs.TIMESTAMP], utc=True)
    written = []
    for day, part in df.groupby(df[specs.TIMESTAMP].dt.strftime("%Y-%m-%d"), sort=True):
        folder = settings.features_dir / table / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        arrow = pa.Table.from_pandas(part[schema.names].reset_index(drop=True), schema=schema, preserve_index=False)
        path, tmp = folder / f"{name}.parquet", folder / f".{name}.parquet.tmp"
        pq.write_table(arrow, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        written.append(path)
    return written
