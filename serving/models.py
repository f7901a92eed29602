"""The models one serving process answers with, loaded together from one bundle.

`ModelSet` is immutable once built: a hot reload builds a new one and swaps the reference (one
`arms.ServingState` per process, read once per request), so a request never sees half of two bundles
and an index is never mutated while it is searched.

A bundle with the NumPy ``user_tower`` component is served without torch: the torch two-tower is
then not loaded, and torch is never imported. Older bundles load the two-tower as their user tower.

Loading never fails because one component does: a component that is absent from the bundle, fails
to load, or does not belong with the others (an index built by another encoder) is None here, with
the reason in ``ModelSet.problems``; the funnel then degrades (no ANN source, no ranker, ...). Only
a directory that is not a bundle at all raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

UserTower = Callable[[str, Sequence[str]], np.ndarray]
"""(user_id, recent item ids newest first) → (1, dim) float32 unit row tagged with ``encoder_version``
(``two_tower.Embeddings`` or ``user_encoder.UserEmbeddings``), ready for ``AnnIndex.search``."""


def torch_user_tower(two_tower) -> UserTower:
    """The training-stack user tower behind the `UserTower` signature: the fallback for bundles
    without a ``user_tower`` component, whose ``UserEncoder.encode`` has the same signature."""
    import pandas as pd

    def encode(user_id: str, recent_items: Sequence[str]) -> np.ndarray:
        now = datetime.now(timezone.utc)
        recent = list(recent_items)[: two_tower.config.n_recent]
        # Newest first → interactions strictly before `now`, the newest one second before it.
        history = pd.DataFrame({"user_id": [user_id] * len(recent), "item_id": recent,
                                "event_time": [now - timedelta(seconds=i + 1) for i in range(len(recent))]})
        return two_tower.user_embeddings([user_id], now, history)

    return encode


@dataclass(frozen=True)
class ModelSet:
    """Everything one bundle gives serving. Fields are None where the bundle lacks the component."""

    name: str
    versions: Mapping[str, str]  # "bundle", "model" (registry version, if any), "encoder", "ranker", "index",
    # "user_tower" ("numpy": the bundle's UserEncoder; "torch": the two-tower, for older bundles; "": none)
    features: tuple[str, ...]  # the ranker's feature columns, in its order
    feature_service: str  # the Feast feature service those features come from
    two_tower: Any | None = None  # loaded only for bundles without a usable NumPy user tower
    user_tower: UserTower | None = None
    index: Any | None = None  # retrieval.ann_index.AnnIndex
    ranker: Any | None = None  # .predict(df) -> DataFrame of p_click[, p_engaged, value]; .version
    catalog: Any | None = None  # training.covisitation.ItemCatalog
    covisitation: Any | None = None  # training.covisitation.Covisitation
    item_vectors: Mapping[str, np.ndarray] = field(default_factory=dict)  # item → unit vector (from the index)
    problems: Mapping[str, str] = field(default_factory=dict)  # component → why it is None

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))
        object.__setattr__(self, "item_vectors", MappingProxyType(dict(self.item_vectors)))
        object.__setattr__(self, "problems", MappingProxyType(dict(self.problems)))
        object.__setattr__(self, "features", tuple(self.features))

    @classmethod
    def from_bundle(cls, bundle, *, model_version: str | None = None, item_vectors: bool = False) -> ModelSet:
        """Load every component of a `training.bundle.Bundle` that loads. `item_vectors`: read the
        indexed item vectors back out of the index, for ``FunnelConfig.mmr_vectors`` (an IVF index
        gets a direct map for that, at load time, before it is ever searched)."""
        problems: dict[str, str] = {}

        def component(name: str):
            if name not in bundle.components:
                problems[name] = "not in the bundle"
                return None
            try:
                return bundle.component(name)
            except Exception as exc:  # a broken component must not take the others down
                log.warning("bundle %s: component %s did not load: %s", bundle.name, name, exc)
                problems[name] = f"{type(exc).__name__}: {exc}"
                return None

        meta = bundle.metadata
        index, ranker = component("index"), _single_threaded(component("ranker"))
        # The NumPy user tower first: when it loads and belongs, the torch two-tower is never
        # loaded, so a serving process on a current bundle never imports torch.
        numpy_tower = component("user_tower") if "user_tower" in bundle.components else None
        encoder = meta.get("encoder_version") or getattr(numpy_tower, "encoder_version", "")
        if numpy_tower is not None and numpy_tower.encoder_version != encoder:
            problems["user_tower"] = f"encoder {numpy_tower.encoder_version} is not the bundle's {encoder}"
            numpy_tower = None
        two_tower = component("two_tower") if numpy_tower is None else None
        encoder = encoder or getattr(two_tower, "encoder_version", "")
        if two_tower is not None and two_tower.encoder_version != encoder:
            problems["two_tower"] = f"encoder {two_tower.encoder_version} is not the bundle's {encoder}"
            two_tower = None
        if index is not None and index.encoder_version != encoder:
            problems["index"] = f"index built by encoder {index.encoder_version}, the bundle's is {encoder}"
            index = None
        if numpy_tower is not None:
            user_tower, tower_kind = numpy_tower.encode, "numpy"
        elif two_tower is not None:  # bundles written before the NumPy export, or whose export is broken
            user_tower, tower_kind = torch_user_tower(two_tower), "torch"
        else:
            user_tower, tower_kind = None, ""
        features = list(meta.get("features") or getattr(ranker, "features", []) or [])
        if ranker is not None and list(getattr(ranker, "features", features)) != features:
            problems["ranker"] = "ranker features differ from the bundle's feature list"
            ranker = None
        versions = {"bundle": f"{bundle.name}@{bundle.created_at}", "encoder": encoder,
                    "ranker": str(getattr(ranker, "version", "") or ""),
                    "index": str(index.metadata.get("built_at", "")) if index is not None else "",
                    "user_tower": tower_kind}
        if model_version is not None:
            versions["model"] = str(model_version)
        return cls(
            name=bundle.name, versions=versions, features=tuple(features),
            feature_service=meta.get("feature_service", "ranker_v1"), two_tower=two_tower,
            user_tower=user_tower,
            index=index, ranker=ranker, catalog=component("catalog"), covisitation=component("covisitation"),
            item_vectors=_vectors(index) if (item_vectors and index is not None) else {}, problems=problems,
        )

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs) -> ModelSet:
        """Load the bundle in directory `path` (raises BundleError if it is not a bundle)."""
        from eightbox.training.bundle import load_bundle

        return cls.from_bundle(load_bundle(path), **kwargs)

    @classmethod
    def from_registry(cls, settings, alias: str = "champion", *, model_name: str | None = None,
                      version: str | None = None, **kwargs) -> ModelSet:
        """Load the bundle of registry `version`, else the one `alias` points at (downloaded through
        MLflow), recording the registry version as ``versions["model"]``. Serving passes the version
        it read from the aliases, so an alias that moves meanwhile cannot mislabel the models."""
        from eightbox.training import registry

        name = model_name or registry.MODEL_NAME
        if version is None:
            version = registry.alias_version(settings, alias, name)
            if version is None:
                raise LookupError(f"no version of {name} holds alias {alias!r}")
        pyfunc = registry.load_version(settings, version, model_name=name)
        return cls.from_bundle(pyfunc.unwrap_python_model().bundle, model_version=version, **kwargs)


def _single_threaded(ranker):
    """Score with one XGBoost thread: a request scores a few hundred rows, where a second OpenMP
    thread only spins for a core the other requests need (on the 2-core bench, `predict` of 420
    rows took p50 24.5 ms with two threads against 0.8 ms with one). Predictions do not change."""
    for booster in (getattr(ranker, "boosters", None) or {}).values():
        booster.set_param({"nthread": 1})
    if ranker is not None and hasattr(ranker, "nthread"):
        ranker.nthread = 1
    return ranker


def _vectors(index) -> dict[str, np.ndarray]:
    """Item id → its indexed vector, read back from the FAISS index; {} where the index type cannot
    reconstruct (re-ranking then falls back to category similarity)."""
    try:
        import faiss

        raw = faiss.index_gpu_to_cpu(index.index) if index.metadata.get("gpu") else index.index
        inner = faiss.extract_index_ivf(raw) if index.metadata.get("index_type", "").startswith("ivf") else None
        if inner is not None:
            inner.make_direct_map()
        matrix = raw.reconstruct_n(0, raw.ntotal)  # (n_items, dim)
    except Exception as exc:
        log.info("item vectors not available from the %s index: %s", index.metadata.get("index_type"), exc)
        return {}
    return dict(zip(index.ids.tolist(), matrix))
