"""Embeddings that carry the encoder that made them, so an index refuses another encoder's queries.

Torch-free on purpose: the training towers (`training.two_tower`) and the request-time NumPy user
tower (`serving.user_encoder`) both return it, and `AnnIndex.search` reads the tag.
"""

from __future__ import annotations

import numpy as np


class Embeddings(np.ndarray):
    """float32 (n, dim) rows tagged with ``encoder_version``. Slicing and views keep the tag;
    ``np.asarray`` drops it (then pass the version to the index explicitly)."""

    encoder_version: str | None

    def __new__(cls, rows: np.ndarray, encoder_version: str) -> Embeddings:
        out = np.asarray(rows, dtype=np.float32).view(cls)
        out.encoder_version = encoder_version
        return out

    def __array_finalize__(self, obj) -> None:
        self.encoder_version = getattr(obj, "encoder_version", None)
