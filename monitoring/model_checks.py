"""Model-layer checks: the champion's score distribution and, once labels have matured, its calibration.

Scores are the champion's click probabilities for the window's impressions, recomputed from the
logged feature vectors (exactly what the ranker saw), so they are comparable with the reference's
score bins, which the same model produced on its training window.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from eightbox.ranking.calibration import expected_calibration_error
from eightbox.training.reference import numeric_summary

from .psi import bin_shares, numeric_psi
from .results import CheckResult, judged
from .thresholds import Threshold

LAYER = "model"
ECE_BINS = 10
MIN_LABELLED = 300  # fewer matured impressions than this give an ECE dominated by noise (10 bins): no_data


def score_psi_check(name: str, summary: Mapping, scores: np.ndarray, threshold: Threshold) -> CheckResult:
    """PSI of live scores over the reference's score bins."""
    return judged(LAYER, "score_psi", name, numeric_psi(summary, scores), threshold,
                  f"{int(np.isfinite(scores).sum())} live scores")


def ece_check(name: str, y: np.ndarray, p: np.ndarray, threshold: Threshold) -> CheckResult:
    """ECE (uniform bins, `ranking.calibration`) of `p` against matured 0/1 labels `y`."""
    ok = np.isfinite(p)
    y, p = np.asarray(y, dtype=float)[ok], np.asarray(p, dtype=float)[ok]
    if len(y) < MIN_LABELLED:
        return judged(LAYER, "ece", name, float("nan"), threshold,
                      f"{len(y)} impressions with matured labels (< {MIN_LABELLED})")
    ece = expected_calibration_error(y, p, n_bins=ECE_BINS)
    return judged(LAYER, "ece", name, ece, threshold,
                  f"{len(y)} labelled impressions: mean p {p.mean():.4f}, observed rate {y.mean():.4f}")


def calibration_curve(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per non-empty uniform bin of p: mean predicted p, observed positive rate, rows."""
    ok = np.isfinite(p)
    y, p = np.asarray(y, dtype=float)[ok], np.asarray(p, dtype=float)[ok]
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    df = pd.DataFrame({"bin": bins, "p": p, "y": y})
    out = df.groupby("bin").agg(mean_p=("p", "mean"), rate=("y", "mean"), rows=("y", "size")).reset_index()
    return out


def score_bins(name: str, summary: Mapping, scores: np.ndarray) -> pd.DataFrame:
    """Reference and live shares of one score per reference bin, with the bin's lower edge."""
    edges = summary.get("edges", [])
    if len(edges) < 2:
        return pd.DataFrame(columns=["score", "lower", "reference", "live"])
    return pd.DataFrame({"score": name, "lower": edges[:-1], "reference": summary["shares"],
                         "live": bin_shares(scores, edges)})


def shadow_checks(shadow: pd.DataFrame, threshold: Threshold) -> list[CheckResult]:
    """Challenger vs champion on the same requests (`ShadowScored` events), one check per pair of
    versions: PSI of the challenger's scores over the deciles of the champion's. High means the
    challenger would rank very differently from what users see now."""
    out = []
    for (champion, challenger), g in shadow.groupby(["champion_version", "challenger_version"]):
        ours, theirs = (np.array([v for scores in g[col] for v in (scores if scores is not None else [])
                                  if v is not None], dtype=float) for col in ("champion_scores", "challenger_scores"))
        value = numeric_psi(numeric_summary(ours), theirs) if len(ours) else float("nan")
        out.append(judged(LAYER, "shadow_score_psi", f"v{challenger} vs v{champion}", value, threshold,
                          f"{len(g)} shadowed requests, {len(theirs)} challenger scores"))
    return out
