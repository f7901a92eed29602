"""The training-distribution reference: what monitoring compares live traffic against.

Stored with every registered model (as JSON, see `registry.log_training_run`), so drift is always
measured against the data the *serving* model learnt from, not against whatever trained last.

    {"n_rows": 37810,
     "features": {"item_ctr_7d": {"edges": [...11 floats...], "shares": [...10...],
                                  "null_rate": 0.02, "min": 0.0, "max": 0.31}, ...},
     "scores": {"p_click": {"edges": [...], "shares": [...], "null_rate": 0.0, ...}}}

Bins are deciles of the training values (edges deduplicated, so a feature with few distinct values
has fewer bins); the outer edges are -inf / +inf so every live value falls in some bin. PSI over
these bins is then well defined for any live sample (`monitoring` adds a small epsilon to empty bins).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

N_BINS = 10


def numeric_summary(values: Iterable[float], n_bins: int = N_BINS) -> dict:
    """Decile bins, the share of non-null values in each, the null rate and the range."""
    x = pd.to_numeric(pd.Series(list(values) if not isinstance(values, pd.Series) else values),
                      errors="coerce").to_numpy(dtype=float)
    null = ~np.isfinite(x)
    v = x[~null]
    out = {"null_rate": float(null.mean()) if len(x) else 0.0, "count": int(len(x))}
    if not len(v):
        return {**out, "edges": [], "shares": [], "min": None, "max": None}
    inner = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    counts, _ = np.histogram(v, bins=edges)
    return {**out, "edges": [float(e) for e in edges], "shares": (counts / counts.sum()).tolist(),
            "min": float(v.min()), "max": float(v.max())}


def categorical_summary(values: Iterable[str], top: int = 50) -> dict:
    """Shares of the `top` most frequent values (the rest pooled as "__other__") and the null rate."""
    s = pd.Series(list(values) if not isinstance(values, pd.Series) else values, dtype=object)
    null = s.isna()
    counts = s[~null].astype(str).value_counts()
    shares = (counts.head(top) / max(len(s[~null]), 1)).to_dict()
    rest = 1.0 - sum(shares.values())
    if rest > 1e-12:
        shares["__other__"] = rest
    return {"null_rate": float(null.mean()) if len(s) else 0.0, "count": int(len(s)), "shares": shares}


def training_reference(train: pd.DataFrame, features: list[str], scores: Mapping[str, np.ndarray],
                       categorical: Iterable[str] = ("category",)) -> dict:
    """The reference of one training run: per-feature and per-score summaries of the train window."""
    cats = [c for c in categorical if c in train.columns]
    return {
        "n_rows": int(len(train)),
        "features": {f: numeric_summary(train[f]) for f in features},
        "categorical": {c: categorical_summary(train[c]) for c in cats},
        "scores": {name: numeric_summary(np.asarray(s, dtype=float)) for name, s in scores.items()},
    }
