"""Population stability index over the training reference's bins.

    PSI = sum over bins of (live share - reference share) * ln(live share / reference share)

The seed's worked example: reference shares 0.50 / 0.35 / 0.15, live 0.65 / 0.25 / 0.10 give
0.15 ln 1.3 + 0.10 ln 1.4 + 0.05 ln 1.5 = 0.0393 + 0.0336 + 0.0203 = 0.093. A bin empty on either
side would make a term infinite, so empty bins count as `EPSILON` instead (only those bins).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

EPSILON = 1e-4
OTHER = "__other__"  # the reference's pool of categories outside its top list (training/reference.py)


def psi(reference: ArrayLike, live: ArrayLike, eps: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins (each sums to ~1)."""
    e = np.asarray(reference, dtype=float)
    a = np.asarray(live, dtype=float)
    if e.shape != a.shape or e.size == 0:
        raise ValueError(f"PSI needs two share vectors of one non-zero length, got {e.shape} and {a.shape}")
    e, a = np.where(e > 0, e, eps), np.where(a > 0, a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_shares(values: Iterable[float], edges: Sequence[float]) -> np.ndarray:
    """Shares of the finite `values` in the bins `edges` delimit (as numpy.histogram: each bin
    [lo, hi), the last one closed); all zeros when no value is finite."""
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    n_bins = len(edges) - 1
    counts = np.bincount(np.searchsorted(np.asarray(edges[1:-1], dtype=float), x, side="right"), minlength=n_bins)
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def numeric_psi(summary: Mapping, values: Iterable[float]) -> float:
    """PSI of live `values` against one numeric reference summary ({"edges", "shares", ...});
    NaN when either side has no values."""
    if len(summary.get("shares", [])) == 0:
        return float("nan")
    live = bin_shares(values, summary["edges"])
    return psi(summary["shares"], live) if live.sum() else float("nan")


def category_shares(values: Iterable, reference_shares: Mapping[str, float]) -> dict[str, float]:
    """Live shares of the non-null `values` over the reference's categories; anything else pooled
    under `OTHER` (as the reference pooled its tail). Empty when no value is non-null."""
    s = pd.Series(values, dtype=object).dropna().astype(str)
    if s.empty:
        return {}
    named = [k for k in reference_shares if k != OTHER]
    counts = s.where(s.isin(named), OTHER).value_counts()
    return {k: float(counts.get(k, 0)) / len(s) for k in [*named, OTHER]}
