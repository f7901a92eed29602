"""The two-tower's user tower at request time, in NumPy: no torch import on the serving path.

``export_user_tower`` (run where the model was trained) writes ``user_tower.npz`` (the user tower's
weights and one precomputed item-tower row per vocabulary item) and ``user_tower.json`` (encoder
version, vocabularies, shapes, the npz's SHA-256; written last, so its presence marks a whole
export). ``UserEncoder.load`` reads only those two files.

Inputs follow ``TwoTower.user_embeddings`` exactly (``tests/unit/test_user_encoder.py`` holds the two
within 1e-5):

- users: vocabulary users get their own row; any other user the row of its hashed bucket,
  ``crc32(user_id) % user_buckets``, as ``TwoTower._user_ids`` does.
- history: ``recent_items`` is newest first, as ``user_recent.last_engaged_items`` holds it. Training
  builds the bag from the user's last ``n_recent`` interactions in time order; the bag is a mean, so
  the order only decides which items fall in the window: the first ``n_recent`` of the list here.
  Items unknown to the vocabulary take a slot of that window but add nothing (neither to the sum
  nor to the count), as index 0 does in training; duplicates count as often as they appear.
- dense: ``{column: value}``, standardised with the training mean and std; a missing column, a
  NaN or no dict at all is 0 (the training mean), as ``TwoTower._dense`` does.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from eightbox.retrieval.embeddings import Embeddings

WEIGHTS_FILE, META_FILE = "user_tower.npz", "user_tower.json"
UserEmbeddings = Embeddings  # the same tagged array the training towers return


def export_user_tower(two_tower, directory: Path | str) -> Path:
    """Write the user tower of a fitted ``TwoTower`` into ``directory`` (may be its save directory)."""
    import torch  # the training side's step; the serving side never runs it

    net, vocab = two_tower.net, two_tower.vocab
    with torch.no_grad():
        state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        rows = torch.arange(len(vocab["items"]) + 1, device=next(net.parameters()).device)
        history = net.known_items(rows).cpu().numpy()  # (n_items + 1, dim): the item tower of each vocabulary item
    history[0] = 0.0  # row 0: unknown item, adds nothing to the bag
    arrays = {
        "user_id": state["user_id.weight"], "history_items": history,
        "w1": state["user_mlp.0.weight"].T, "b1": state["user_mlp.0.bias"],  # (n_in, 2 dim)
        "w2": state["user_mlp.2.weight"].T, "b2": state["user_mlp.2.bias"],  # (2 dim, dim)
        "dense_w": state["dense.weight"].T if net.dense is not None else np.zeros((0, two_tower.config.dim)),
        "dense_b": state["dense.bias"] if net.dense is not None else np.zeros(two_tower.config.dim),
    }
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / WEIGHTS_FILE, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
    meta = {
        "encoder_version": two_tower.encoder_version, "dim": two_tower.config.dim,
        "n_recent": two_tower.config.n_recent, "user_buckets": two_tower.config.user_buckets,
        "users": list(vocab["users"]), "items": list(vocab["items"]),
        "dense_columns": list(vocab["dense_columns"]), "dense_mean": list(vocab["dense_mean"]),
        "dense_std": list(vocab["dense_std"]), "weights_sha256": _sha256(path / WEIGHTS_FILE),
    }
    (path / META_FILE).write_text(json.dumps(meta))  # last: its presence marks a whole export
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class UserEncoder:
    """The user tower of one encoder version. Build with ``UserEncoder.load``."""

    def __init__(self, meta: dict, arrays: Mapping[str, np.ndarray]):
        self.encoder_version: str = meta["encoder_version"]
        self.dim, self.n_recent, self.user_buckets = meta["dim"], meta["n_recent"], meta["user_buckets"]
        self._users = {u: i + self.user_buckets for i, u in enumerate(meta["users"])}
        self._items = {v: i + 1 for i, v in enumerate(meta["items"])}
        self.dense_columns: list[str] = meta["dense_columns"]
        self._mean, self._std = np.asarray(meta["dense_mean"]), np.asarray(meta["dense_std"])
        a = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        self._user_id, self._history = a["user_id"], a["history_items"]
        self._w1, self._b1, self._w2, self._b2 = a["w1"], a["b1"], a["w2"], a["b2"]
        self._dense_w, self._dense_b = a["dense_w"], a["dense_b"]

    @classmethod
    def load(cls, directory: Path | str) -> UserEncoder:
        """The user tower exported into ``directory``; ValueError if the weights file is not the one
        the export recorded (a torn or mixed copy)."""
        path = Path(directory)
        meta = json.loads((path / META_FILE).read_text())
        if _sha256(path / WEIGHTS_FILE) != meta["weights_sha256"]:
            raise ValueError(f"{path / WEIGHTS_FILE} is not the file exported with {path / META_FILE}")
        with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
            return cls(meta, {k: npz[k] for k in npz.files})

    def inputs(self, user_ids: Sequence[str], recent_items: Sequence[Sequence[str]],
               dense: Sequence[Mapping[str, float] | None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tower's inputs as ``TwoTower`` builds them: user rows (n,) int64, history item rows
        (n, n_recent) int64 (0 = unknown or padding), standardised dense features (n, k) float32."""
        uid = np.fromiter((self._users.get(u, zlib.crc32(u.encode()) % self.user_buckets) for u in map(str, user_ids)),
                          dtype=np.int64, count=len(user_ids))
        hist = np.zeros((len(user_ids), self.n_recent), dtype=np.int64)
        for r, recent in enumerate(recent_items):
            window = [self._items.get(i, 0) for i in list(recent)[: self.n_recent]]  # newest first
            hist[r, : len(window)] = window
        k = len(self.dense_columns)
        if not k or dense is None:
            return uid, hist, np.zeros((len(user_ids), k), dtype=np.float32)
        raw = np.array([[np.nan if d is None else d.get(c, np.nan) for c in self.dense_columns] for d in dense],
                       dtype=np.float64).reshape(len(user_ids), k)
        return uid, hist, np.nan_to_num((raw - self._mean) / self._std).astype(np.float32)

    def forward(self, uid: np.ndarray, hist: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """(n, dim) float32 unit rows for the inputs of ``inputs`` (``_Towers.users`` in NumPy)."""
        counts = np.maximum((hist != 0).sum(1, keepdims=True), 1)
        bag = self._history[hist].sum(1) / counts.astype(np.float32)  # (n, dim): mean of (n, n_recent, dim), row 0 zero
        parts = [self._user_id[uid], bag]
        if len(self.dense_columns):
            parts.append(dense @ self._dense_w + self._dense_b)
        h = np.maximum(np.concatenate(parts, 1) @ self._w1 + self._b1, 0.0)  # (n, 2 dim)
        out = h @ self._w2 + self._b2  # (n, dim)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def encode_batch(self, user_ids: Sequence[str], recent_items: Sequence[Sequence[str]],
                     dense: Sequence[Mapping[str, float] | None] | None = None) -> UserEmbeddings:
        """(n, dim) unit rows, one per user in order, tagged with ``encoder_version``; ``recent_items[r]``
        is user r's engaged item ids newest first, ``dense[r]`` their dense features (or None)."""
        if len(recent_items) != len(user_ids) or (dense is not None and len(dense) != len(user_ids)):
            raise ValueError("need one history (and one dense dict, if any) per user")
        return UserEmbeddings(self.forward(*self.inputs(user_ids, recent_items, dense)), self.encoder_version)

    def encode(self, user_id: str, recent_items: Sequence[str] = (),
               dense: Mapping[str, float] | None = None) -> UserEmbeddings:
        """One request: a (1, dim) unit row for ``user_id``, ready for ``AnnIndex.search``."""
        return self.encode_batch([user_id], [recent_items], None if dense is None else [dense])
