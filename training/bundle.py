"""A model bundle: everything serving needs from one training run, in one directory.

Layout::

    <bundle>/
      bundle.json          # name, created_at, components, metadata (format below)
      two_tower/ ...       # one folder per component, written by the component's own `save(dir)`
      index/ ...
      ranker/ ...

``bundle.json``::

    {"format": 1, "name": "eightbox-recommender", "created_at": "2024-01-02T03:04:05+00:00",
     "components": {"ranker": {"loader": "eightbox.ranking.model:MultiTaskRanker.load",
                               "path": "ranker", "version": "1"}},
     "metadata": {"encoder_version": "...", "feature_service": "ranker_v1",
                  "dataset_version": "...", "dataset_hash": "..."}}

A component is loaded by calling its loader (``module:attribute[.attribute]``, imported with
`importlib`) with the component's absolute directory. Components store plain files (JSON, NumPy,
framework checkpoints); the bundle format itself never pickles an object. Loaders are code that the
bundle names, so a bundle is trusted exactly as much as the code it points at.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

MANIFEST = "bundle.json"
FORMAT = 1
RANKER = "ranker"  # the component `Bundle.predict` delegates to

_LOADER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_COMPONENT_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


class BundleError(ValueError):
    """A bundle that cannot be written or read as asked; the message names what is wrong."""


@dataclass(frozen=True)
class ComponentSpec:
    loader: str
    """``module:callable``; called with the component's absolute directory, returns the component."""

    path: str
    """The component's directory, relative to the bundle root."""

    version: str = "1"
    """The component's own format or model version, for lineage."""


@dataclass
class Bundle:
    """A bundle read from disk. Components load on first use and are then cached."""

    root: Path
    name: str
    created_at: str
    components: dict[str, ComponentSpec]
    metadata: dict[str, Any] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def component(self, name: str) -> Any:
        """The named component, loaded through its loader on the first call, the same object after."""
        if name not in self._loaded:
            if name not in self.components:
                raise BundleError(f"bundle {self.name!r} has no component {name!r} "
                                  f"(it has: {', '.join(sorted(self.components)) or 'none'})")
            spec = self.components[name]
            self._loaded[name] = resolve_loader(spec.loader)(self.root / spec.path)
        return self._loaded[name]

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """The ranker component's `predict(df)`: one output row per input row, in input order."""
        out = self.component(RANKER).predict(df)
        if not isinstance(out, pd.DataFrame):
            raise BundleError(f"the {RANKER!r} component's predict returned {type(out).__name__}, "
                              "not a DataFrame")
        return out


def resolve_loader(loader: str):
    """The callable a ``module:attr[.attr]`` string names (e.g. ``pkg.mod:Class.load``)."""
    if not _LOADER.match(loader):
        raise BundleError(f"loader {loader!r} is not of the form 'module:callable'")
    module_name, attrs = loader.split(":")
    target: Any = importlib.import_module(module_name)
    for attr in attrs.split("."):
        target = getattr(target, attr)
    if not callable(target):
        raise BundleError(f"loader {loader!r} does not name a callable")
    return target


def save_component(root: str | Path, name: str, obj: Any, *, loader: str | None = None,
                   version: str = "1") -> ComponentSpec:
    """Write `obj` into ``<root>/<name>/`` through its `save(dir)` method and return its spec.

    The loader defaults to ``<obj's module>:<obj's class>.load``, the save/load pair convention."""
    if not _COMPONENT_NAME.match(name):
        raise BundleError(f"component name {name!r} must be an identifier")
    directory = Path(root) / name
    directory.mkdir(parents=True, exist_ok=True)
    obj.save(directory)
    cls = type(obj)
    return ComponentSpec(loader=loader or f"{cls.__module__}:{cls.__qualname__}.load", path=name,
                         version=str(version))


def write_bundle(root: str | Path, *, name: str, components: Mapping[str, ComponentSpec],
                 metadata: Mapping[str, Any] | None = None, created_at: str | None = None) -> Bundle:
    """Write ``bundle.json`` for component folders already under `root`, then read it back.

    Fails (writing nothing) if a component's folder is missing or outside the root, or a loader
    string is malformed. `metadata` must be JSON-serializable."""
    root = Path(root).resolve()
    for cname, spec in components.items():
        if not _COMPONENT_NAME.match(cname):
            raise BundleError(f"component name {cname!r} must be an identifier")
        if not _LOADER.match(spec.loader):
            raise BundleError(f"component {cname!r}: loader {spec.loader!r} is not 'module:callable'")
        directory = (root / spec.path).resolve()
        if Path(spec.path).is_absolute() or root not in directory.parents:
            raise BundleError(f"component {cname!r}: path {spec.path!r} must be a folder inside the bundle")
        if not directory.is_dir():
            raise BundleError(f"component {cname!r}: folder {directory} does not exist")
    manifest = {
        "format": FORMAT,
        "name": name,
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "components": {c: asdict(s) for c, s in components.items()},
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)  # fails here on non-JSON metadata
    (root / MANIFEST).write_text(text + "\n")
    return load_bundle(root)


def load_bundle(path: str | Path) -> Bundle:
    """The bundle at `path` (its directory). Reads only ``bundle.json``; no component is loaded yet."""
    root = Path(path).resolve()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, this code reads {FORMAT}")
    components = {c: ComponentSpec(**s) for c, s in manifest["components"].items()}
    return Bundle(root=root, name=manifest["name"], created_at=manifest["created_at"],
                  components=components, metadata=manifest.get("metadata", {}))
