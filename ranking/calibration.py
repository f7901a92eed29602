"""Probability calibration: expected calibration error and two calibrators (isotonic, Platt).

A ranker head's raw probabilities are only good for ordering; the value formula adds heads
together, so each must mean what it says ("0.1" = one click in ten). A `Calibrator` is fit on a
window the trees never trained on (the validation window) and maps raw -> calibrated probability
with a monotone non-decreasing function, so calibration never changes the order within a head.

Calibrators serialize to plain JSON (`to_dict` / `from_dict`): a saved model loads without pickles,
and a loaded calibrator gives bit-identical outputs.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

EPS = 1e-6  # probabilities are clipped into [EPS, 1 - EPS] before logit / log loss
Method = Literal["isotonic", "platt"]
METHODS: tuple[str, ...] = ("isotonic", "platt")


def expected_calibration_error(y: Any, p: Any, n_bins: int = 15,
                               strategy: Literal["uniform", "quantile"] = "uniform") -> float:
    """ECE of binary predictions: the weighted mean of |accuracy - confidence| over bins.

    Predictions are grouped into `n_bins` bins of p; in each bin, accuracy = the fraction of
    positives (mean of y) and confidence = the mean predicted probability (mean of p). ECE is
    sum over non-empty bins of (rows in bin / all rows) * |accuracy - confidence|, in [0, 1].
    strategy="uniform": bins of equal width on [0, 1] (the last one closed at 1);
    strategy="quantile": bins holding about equal numbers of rows (edges at quantiles of p;
    tied edges merge, so there may be fewer bins). Perfect calibration gives ~0 (plus sampling
    noise of order sqrt(p(1-p)/rows per bin)); always predicting 0.9 on 50% positives gives 0.4.
    """
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError("y and p must be non-empty and of the same length")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    else:
        raise ValueError(f"unknown strategy {strategy!r}: 'uniform' or 'quantile'")
    # Inner edges only: bin i holds edges[i] <= p < edges[i+1]; the top bin also takes p == max edge.
    bins = np.searchsorted(edges[1:-1], p, side="right")
    n = max(len(edges) - 1, 1)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n) - np.bincount(bins, weights=p, minlength=n))
    return float(gap.sum() / y.size)  # sum_b n_b/N * |sum y/n_b - sum p/n_b| = sum_b |sum y - sum p| / N


def log_loss(y: Any, p: Any) -> float:
    """Mean binary cross-entropy, with p clipped into [EPS, 1 - EPS]."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


class Calibrator:
    """A monotone map raw probability -> calibrated probability, fit on held-out labels.

    method="isotonic": sklearn IsotonicRegression (increasing, out_of_bounds="clip"); outputs
    interpolate linearly between its thresholds and are clipped to the end values outside them.
    method="platt": a logistic regression on logit(p): sigmoid(a * logit(p) + b), unpenalized.
    """

    def __init__(self, method: Method = "isotonic"):
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}: one of {METHODS}")
        self.method = method
        self._x: np.ndarray | None = None  # isotonic thresholds (increasing)
        self._y: np.ndarray | None = None
        self._ab: tuple[float, float] | None = None  # platt slope, intercept

    @property
    def fitted(self) -> bool:
        return self._x is not None or self._ab is not None

    def fit(self, p: Any, y: Any) -> Calibrator:
        """Fit on raw probabilities `p` and their 0/1 labels `y`; returns self."""
        p = np.asarray(p, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        if p.shape != y.shape or p.size == 0:
            raise ValueError("p and y must be non-empty and of the same length")
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
            self._x = np.asarray(iso.X_thresholds_, dtype=float)
            self._y = np.asarray(iso.y_thresholds_, dtype=float)
        else:
            self._ab = _fit_platt(_logit(p), y)
        return self

    def transform(self, p: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as `p`; non-decreasing in p."""
        if not self.fitted:
            raise RuntimeError("Calibrator is not fitted")
        p = np.asarray(p, dtype=float)
        if self.method == "isotonic":
            # np.interp clamps outside [x0, xn] to the end values: the same as out_of_bounds="clip".
            # Fresh and loaded calibrators both go through here, so round trips are bit-identical.
            return np.interp(p, self._x, self._y)
        a, b = self._ab  # type: ignore[misc]
        return 1.0 / (1.0 + np.exp(-(a * _logit(p) + b)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (floats survive json round trips exactly)."""
        if not self.fitted:
            raise RuntimeError("Calibrator is not fitted")
        if self.method == "isotonic":
            return {"method": "isotonic", "x": self._x.tolist(), "y": self._y.tolist()}  # type: ignore[union-attr]
        a, b = self._ab  # type: ignore[misc]
        return {"method": "platt", "a": a, "b": b}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        cal = cls(d["method"])
        if cal.method == "isotonic":
            cal._x = np.asarray(d["x"], dtype=float)
            cal._y = np.asarray(d["y"], dtype=float)
        else:
            cal._ab = (float(d["a"]), float(d["b"]))
        return cal


def _fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if np.unique(y).size < 2:  # one class only: a constant at the observed rate
        return 0.0, float(_logit(np.array([y.mean()]))[0])
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=np.inf, max_iter=1000).fit(z.reshape(-1, 1), y.astype(int))
    # A negative slope would reverse the head's order; a flat map is the honest fallback.
    a = max(float(lr.coef_[0, 0]), 0.0)
    b = float(lr.intercept_[0]) if a > 0 else float(_logit(np.array([y.mean()]))[0])
    return a, b


def choose_calibrator(p: Any, y: Any, methods: tuple[str, ...] = METHODS, folds: int = 2,
                      seed: int = 0) -> tuple[Calibrator, dict[str, float]]:
    """Pick the method with the lowest out-of-fold log loss on (p, y), then refit it on all rows.

    Scoring on the rows a calibrator was fit on would always favour isotonic (it can memorize),
    so each method is fit on all folds but one and scored on the one left out. Returns the
    refit calibrator and {method: out-of-fold log loss}. Deterministic for a seed.
    """
    p = np.asarray(p, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    fold = np.random.default_rng(seed).permutation(p.size) % folds
    scores: dict[str, float] = {}
    for method in methods:
        oof = np.empty_like(p)
        for k in range(folds):
            held = fold == k
            oof[held] = Calibrator(method).fit(p[~held], y[~held]).transform(p[held])
        scores[method] = log_loss(y, oof)
    best = min(methods, key=lambda m: (scores[m], m))
    return Calibrator(best).fit(p, y), scores
