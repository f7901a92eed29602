"""Approximate nearest-neighbour search over item embeddings (FAISS, inner product).

The index type follows the catalog size (``choose_index``): exact ``flat`` below 20k items,
``ivf_flat`` up to 200k, and above that ``hnsw`` on CPU or ``ivf_flat`` on a GPU (FAISS has no GPU
HNSW); ``ivf_pq`` (compressed, re-ranked exactly) can be asked for by name when memory is short.
At build time the search-time knob (``nprobe`` or ``efSearch``) is raised step by step until
recall@100 against exact search on a sample of queries reaches ``target_recall``; the measured
recall@10 / @100 and every parameter go into the metadata saved beside the index.

Why HNSW above 200k on CPU, measured with ``eightbox bench ann`` on the 2-core development machine
(1M vectors of dim 64 in 1,000 topics, knob tuned to recall@100 ≥ 0.95): HNSW (M 32, efSearch 48)
ran 87x exact single-query speed and 83x batched, built in 58 s; IVF-Flat (nlist 4096, nprobe 6)
ran 139x / 130x, built in 18 s. IVF-Flat is faster on such data, but HNSW gives the higher
recall@10 (0.992 vs 0.982) and degrades less on clusters without low-dimensional structure
(4.4x vs 2.8x exact at recall@100 0.95), so it is the default; ``kind="ivf_flat"`` remains a choice.

An index belongs to one encoder: it records the ``encoder_version`` of the item tower that made its
vectors, and ``load`` and ``search`` refuse queries from any other version (``EncoderVersionMismatch``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

FLAT_MAX = 20_000  # below this, exact search is fast enough and needs no training
IVF_FLAT_MAX = 200_000  # up to this, IVF-Flat; above it HNSW on CPU (see bench_ann for the numbers)
RECALL_KS = (10, 100)
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "index.json"


class EncoderVersionMismatch(ValueError):
    """Queries from one encoder against an index built from another: the spaces differ."""

    def __init__(self, index_version: str, query_version: str):
        super().__init__(f"index was built from item embeddings of encoder {index_version!r}, but the queries "
                         f"come from encoder {query_version!r}; rebuild the index for {query_version!r} "
                         f"or query with {index_version!r}")
        self.index_version, self.query_version = index_version, query_version


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # "flat" | "ivf_flat" | "hnsw" | "ivf_pq"
    params: dict = field(default_factory=dict)  # build parameters: nlist, M, efConstruction, pq_m, k_factor


def _nlist(n: int) -> int:
    """About 4·sqrt(n) inverted lists, rounded to a power of two, at least 39 training points each."""
    return max(1, min(2 ** round(math.log2(4 * math.sqrt(n))), n // 39))


def choose_index(n_items: int, dim: int, gpu: bool = False, kind: str | None = None) -> IndexChoice:
    """The index type and build parameters for a catalog of ``n_items`` vectors of ``dim``."""
    kind = kind or ("flat" if n_items < FLAT_MAX else
                    "ivf_flat" if n_items <= IVF_FLAT_MAX or gpu else "hnsw")
    if kind == "flat":
        return IndexChoice("flat")
    if kind == "ivf_flat":
        return IndexChoice("ivf_flat", {"nlist": _nlist(n_items)})
    if kind == "hnsw":
        return IndexChoice("hnsw", {"M": 32, "efConstruction": 80})
    if kind == "ivf_pq":
        pq_m = next(m for m in (dim // 2, dim // 4, 16, 8, 4, 2, 1) if m and dim % m == 0)
        return IndexChoice("ivf_pq", {"nlist": _nlist(n_items), "pq_m": pq_m, "k_factor": 4})
    raise ValueError(f"unknown index kind {kind!r}; expected flat, ivf_flat, hnsw or ivf_pq")


def _build(choice: IndexChoice, vectors: np.ndarray, seed: int) -> faiss.Index:
    n, dim = vectors.shape
    ip, p = faiss.METRIC_INNER_PRODUCT, choice.params
    index: faiss.Index
    if choice.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif choice.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["M"], ip)
        index.hnsw.efConstruction = p["efConstruction"]
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if choice.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], ip)
        else:
            index = faiss.IndexRefineFlat(faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["pq_m"], 8, ip))
            index.k_factor = p["k_factor"]
        sample = vectors[np.random.default_rng(seed).permutation(n)[: 64 * p["nlist"]]]  # k-means needs no more
        index.train(sample)
    index.add(vectors)
    return index


def _set_knob(index: faiss.Index, kind: str, value: int) -> None:
    """Set the search-time knob: nprobe for IVF kinds, efSearch for HNSW."""
    if kind == "hnsw":
        index.hnsw.efSearch = value
    elif kind != "flat":
        space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
        space.set_index_parameter(index, "nprobe", value)


_gpu_resources: list = []  # one StandardGpuResources per process, alive as long as its indexes


def _to_gpu(index: faiss.Index, kind: str) -> tuple[faiss.Index, bool]:
    """A GPU copy where FAISS has one (flat, IVF) and a GPU is present; else the index itself."""
    if kind in ("flat", "ivf_flat") and faiss.get_num_gpus() > 0:
        if not _gpu_resources:
            _gpu_resources.append(faiss.StandardGpuResources())
        return faiss.index_cpu_to_gpu(_gpu_resources[0], 0, index), True
    return index, False


def _version_of(array: np.ndarray, explicit: str | None) -> str:
    """The encoder version of `array`: the one passed, else the array's own tag (two-tower Embeddings)."""
    tagged = getattr(array, "encoder_version", None)
    if explicit and tagged and explicit != tagged:
        raise ValueError(f"encoder_version={explicit!r} contradicts the array's own tag {tagged!r}")
    if not (explicit or tagged):
        raise ValueError("no encoder version: pass encoder_version=... (that of the tower that made the vectors)")
    return explicit or tagged


_KNOBS = {"ivf_flat": "nprobe", "ivf_pq": "nprobe", "hnsw": "efSearch"}
_STEPS = sorted({int(f * 2 ** i) for i in range(16) for f in (1, 1.5)})  # 1, 2, 3, 4, 6, 8, 12, 16, ...


def _tune(index: faiss.Index, choice: IndexChoice, queries: np.ndarray, truth: np.ndarray,
          target: float) -> tuple[dict, np.ndarray]:
    """Raise the search knob in ~1.4x steps until recall@k (k = truth's width) reaches ``target``,
    or the knob reaches its top (nlist; efSearch 1024). Returns ({knob: value}, rows found)."""
    k, knob = truth.shape[1], _KNOBS.get(choice.kind)
    if knob is None:
        return {}, index.search(queries, k)[1]
    low, top = (1, choice.params["nlist"]) if knob == "nprobe" else (16, 1024)
    for value in [v for v in _STEPS if low <= v <= top]:
        _set_knob(index, choice.kind, value)
        found = index.search(queries, k)[1]
        if _recall(found, truth, k) >= target:
            break
    return {knob: value}, found


def _recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k (rows of row numbers, -1 = none)."""
    hits = [len(set(f[:k][f[:k] >= 0]) & set(t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / min(k, truth.shape[1])


class AnnIndex:
    """An item-embedding index that answers with item ids. Build with ``build``, or ``load``."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, metadata: dict):
        self.index, self.ids, self.metadata = index, ids, metadata

    @property
    def encoder_version(self) -> str:
        return self.metadata["encoder_version"]

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, encoder_version: str | None = None, *, kind: str | None = None,
              params: dict | None = None, queries: np.ndarray | None = None, n_recall_queries: int = 500,
              target_recall: float = 0.95, use_gpu: bool | None = None, seed: int = 0) -> AnnIndex:
        """Index ``vectors`` (n, dim; row i is item ``ids[i]``) made by encoder ``encoder_version``
        (default: the vectors' own tag, as ``TwoTower.item_embeddings`` returns them).

        ``kind`` / ``params`` override ``choose_index``. Recall is measured on ``queries`` (e.g. user
        embeddings of the same encoder), else on ``n_recall_queries`` indexed vectors drawn at random.
        ``use_gpu``: None = a GPU when FAISS sees one.
        """
        started = time.monotonic()
        encoder_version = _version_of(vectors, encoder_version)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids) or not len(ids):
            raise ValueError(f"need one vector per id: {len(ids)} ids, vectors of shape {vectors.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("item ids repeat")
        n, dim = vectors.shape
        gpu_wanted = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
        base = choose_index(n, dim, gpu=gpu_wanted, kind=kind)
        choice = IndexChoice(base.kind, {**base.params, **(params or {})})
        index = _build(choice, vectors, seed)
        index, gpu = _to_gpu(index, choice.kind) if gpu_wanted else (index, False)
        if queries is None:
            queries = vectors[np.random.default_rng(seed).choice(n, size=min(n_recall_queries, n), replace=False)]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        truth = exact.search(queries, min(max(RECALL_KS), n))[1]
        search_params, found = _tune(index, choice, queries, truth, target_recall)
        recall = {str(r): round(_recall(found, truth, r), 4) for r in RECALL_KS}  # r > n: recall@n
        metadata = {
            "encoder_version": encoder_version, "index_type": choice.kind,
            "params": {**choice.params, **search_params}, "n_items": n, "dim": dim, "metric": "inner_product",
            "recall": recall, "recall_queries": len(queries), "target_recall": target_recall,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpu": gpu,
            "build_seconds": round(time.monotonic() - started, 2), "faiss_version": faiss.__version__,
        }
        return cls(index, np.asarray(ids, dtype=str), metadata)

    def search(self, queries: np.ndarray, k: int, *, encoder_version: str | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` item ids per query row (a 1-d query is one row), best first, and their inner
        products: (n, min(k, n_items)) float32, -inf where the index found fewer (the id list is
        then shorter).

        The queries' encoder version is ``encoder_version`` or else their own tag (the two-tower's
        ``user_embeddings`` carry it); one that differs from the index's raises
        EncoderVersionMismatch, and queries with no version at all raise ValueError."""
        version = _version_of(queries, encoder_version)
        if version != self.encoder_version:
            raise EncoderVersionMismatch(self.encoder_version, version)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.shape[1] != self.metadata["dim"]:
            raise ValueError(f"queries have dim {q.shape[1]}, the index {self.metadata['dim']}")
        scores, rows = self.index.search(q, min(k, len(self.ids)))
        scores[rows < 0] = -np.inf
        return [self.ids[r[r >= 0]].tolist() for r in rows], scores

    def save(self, directory: Path | str) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and ``index.json`` (metadata, last) into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.metadata["gpu"] else self.index
        faiss.write_index(cpu, str(path / INDEX_FILE))
        np.save(path / IDS_FILE, self.ids, allow_pickle=False)
        (path / META_FILE).write_text(json.dumps(self.metadata, indent=2))
        return path

    @classmethod
    def load(cls, directory: Path | str, *, expected_encoder_version: str | None = None,
             use_gpu: bool | None = None) -> AnnIndex:
        """The index saved in ``directory``. With ``expected_encoder_version``, one built for another
        encoder raises EncoderVersionMismatch before the index file is read; without it (a generic
        loader) the check happens at every ``search``."""
        path = Path(directory)
        metadata = json.loads((path / META_FILE).read_text())
        if expected_encoder_version is not None and metadata["encoder_version"] != expected_encoder_version:
            raise EncoderVersionMismatch(metadata["encoder_version"], expected_encoder_version)
        index = faiss.read_index(str(path / INDEX_FILE))
        kind, params = metadata["index_type"], metadata["params"]
        gpu_wanted = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
        index, gpu = _to_gpu(index, kind) if gpu_wanted else (index, False)
        for knob in ("nprobe", "efSearch"):
            if knob in params:
                _set_knob(index, kind, params[knob])
        ids = np.load(path / IDS_FILE, allow_pickle=False)
        return cls(index, ids, {**metadata, "gpu": gpu})
