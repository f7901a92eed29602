"""Versioned training datasets on disk: content-addressed Parquet splits with a manifest.

Layout: ``<root>/datasets/<name>/<version>/{train,valid,test}.parquet`` and ``manifest.json``, where
``<root>`` is `Settings.data_dir` unless given. The version is the first 12 hex digits of the
content hash, so the same rows always get the same version and writing them again changes nothing.

Content hash: SHA-256 over a canonical serialisation of every row — per split (in the order train,
valid, test), the split name, its column names and dtypes (sorted by name), then its rows, each
written as one line of canonical values (NaN/None as ``null``, timestamps as UTC nanoseconds, floats
by ``repr``, strings JSON-quoted) and sorted. Row and column order therefore do not change it; any
value, row, column, dtype or split membership does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Mapping

import pandas as pd

from eightbox.settings import Settings
from eightbox.training.labels import BASE_COLUMNS
from eightbox.training.splits import SPLITS, TemporalSplit

__all__ = ["Dataset", "DatasetIntegrityError", "content_hash", "load_dataset", "write_dataset"]

VERSION_CHARS = 12
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DatasetIntegrityError(ValueError):
    """A dataset's files do not hash to its manifest (edited, truncated or mixed up)."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its splits and its manifest."""

    path: Path
    manifest: dict
    splits: dict[str, pd.DataFrame]

    @property
    def train(self) -> pd.DataFrame:
        return self.splits["train"]

    @property
    def valid(self) -> pd.DataFrame:
        return self.splits["valid"]

    @property
    def test(self) -> pd.DataFrame:
        return self.splits["test"]

    @property
    def feature_columns(self) -> list[str]:
        return list(self.manifest["feature_columns"])


def _canonical(col: pd.Series) -> pd.Series:
    """Each value of one column as a canonical string (see the module docstring)."""
    isna = col.isna()
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col.dtype):
        t = pd.to_datetime(col, utc=True).astype("datetime64[ns, UTC]")
        out = pd.Series(t.to_numpy("datetime64[ns]").view("int64").astype(str), index=col.index)
    elif pd.api.types.is_bool_dtype(col.dtype):
        out = col.map(lambda v: "true" if v else "false")
    elif pd.api.types.is_integer_dtype(col.dtype):
        out = col.astype(object).map(lambda v: str(int(v)) if not pd.isna(v) else "")
    elif pd.api.types.is_float_dtype(col.dtype):
        out = col.astype("float64").map(lambda v: repr(v + 0.0))  # + 0.0: -0.0 and 0.0 are one value
    else:
        out = col.map(lambda v: json.dumps(v, sort_keys=True, default=str))
    return out.where(~isna, "null")


def content_hash(splits: Mapping[str, pd.DataFrame]) -> str:
    """Hex SHA-256 of the rows of every split (see the module docstring); order-independent."""
    digest = hashlib.sha256()
    for name in SPLITS:
        df = splits[name]
        columns = sorted(df.columns)
        digest.update(json.dumps({"split": name, "columns": [[c, str(df[c].dtype)] for c in columns]}).encode())
        digest.update(b"\n")
        if df.empty:
            continue
        lines = _canonical(df[columns[0]])
        for c in columns[1:]:
            lines = lines.str.cat(_canonical(df[c]), sep="\x1f")  # \x1f never survives JSON quoting
        for line in sorted(lines.tolist()):  # a list, not a fixed-width numpy array: rows can be long
            digest.update(line.encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _seconds(d: timedelta | None) -> float | None:
    return None if d is None else pd.Timedelta(d).total_seconds()


def write_dataset(splits: Mapping[str, pd.DataFrame], name: str, *, settings: Settings | None = None,
                  root: Path | None = None, windows: TemporalSplit | None = None,
                  feature_columns: list[str] | None = None, feature_service: str | None = None,
                  label_delay: timedelta | None = None, attribution_window: timedelta | None = None,
                  source: str | None = None) -> Path:
    """Write `splits` (exactly train, valid and test) as a version of dataset `name`; returns the
    version folder. `feature_columns` defaults to every column beyond `labels.BASE_COLUMNS`.

    Idempotent: when the version already exists with the same manifest nothing is written; when it
    exists with a different manifest (the same rows described otherwise) ValueError is raised
    rather than overwrite what a trained model may point to. The folder appears whole or not at
    all (written beside it, then renamed).
    """
    if set(splits) != set(SPLITS):
        raise ValueError(f"splits must be exactly {SPLITS}, got {sorted(splits)}")
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_', '.', '-' (not starting with them)")
    if root is None:
        if settings is None:
            raise ValueError("give a settings (datasets go under settings.data_dir) or a root folder")
        root = settings.data_dir
    frames = {s: splits[s].reset_index(drop=True) for s in SPLITS}
    columns = list(frames["train"].columns)
    for s in SPLITS:
        if list(frames[s].columns) != columns:
            raise ValueError(f"split {s!r} has columns {list(frames[s].columns)}, train has {columns}")
    if feature_columns is None:
        feature_columns = [c for c in columns if c not in BASE_COLUMNS]
    missing = [c for c in feature_columns if c not in columns]
    if missing:
        raise ValueError(f"feature columns {missing} are not in the data")

    digest = content_hash(frames)
    version = digest[:VERSION_CHARS]
    manifest = {
        "name": name, "version": version, "content_hash": digest,
        "rows": {s: len(frames[s]) for s in SPLITS},
        "columns": {c: str(frames["train"][c].dtype) for c in columns},
        "windows": windows.to_dict() if windows is not None else None,
        "feature_columns": list(feature_columns), "feature_service": feature_service,
        "label_delay_s": _seconds(label_delay), "attribution_window_s": _seconds(attribution_window),
        "source": source,
    }
    folder = Path(root) / "datasets" / name / version
    if (folder / MANIFEST).exists():
        return _same_or_refuse(folder, manifest)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{version}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for s in SPLITS:
            frames[s].to_parquet(tmp / f"{s}.parquet", index=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, folder)
    except OSError:
        if (folder / MANIFEST).exists():  # another writer finished the same version first
            return _same_or_refuse(folder, manifest)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _same_or_refuse(folder: Path, manifest: dict) -> Path:
    existing = json.loads((folder / MANIFEST).read_text())
    if existing != manifest:
        differ = sorted(k for k in manifest.keys() | existing.keys() if manifest.get(k) != existing.get(k))
        raise ValueError(f"{folder} already holds these rows with another manifest (differs in {differ}); "
                         "use another dataset name")
    return folder


def load_dataset(path: Path | str) -> Dataset:
    """Read a version folder written by `write_dataset`; raises DatasetIntegrityError when the
    Parquet files do not hash to the manifest's content_hash."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    splits = {s: pd.read_parquet(path / f"{s}.parquet") for s in SPLITS}
    got = content_hash(splits)
    if got != manifest["content_hash"]:
        raise DatasetIntegrityError(f"{path}: the files hash to {got[:VERSION_CHARS]}..., the manifest says "
                                    f"{manifest['content_hash'][:VERSION_CHARS]}...: the data changed after it was written")
    return Dataset(path, manifest, splits)
