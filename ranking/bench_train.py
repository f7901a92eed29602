"""The ranker half of `eightbox bench train`: XGBoost `hist` training time on synthetic rows.

1,000,000 rows x 30 features x 100 trees (quick: 200,000 rows), binary:logistic, depth 6,
256 bins, nthread=2, timed around `xgb.train` only (the DMatrix build is reported apart; the
quantile sketch happens inside the first round, so it is in the training time). The reference is
the published figure the issue quotes, about 5.5 s for 1M rows x 100 trees on 2 cores, scaled
linearly in rows for the quick run (hist training is close to linear in rows);
ratio = measured / reference, so below 1 is faster than the reference.
"""

from __future__ import annotations

import os
import time

import numpy as np

REFERENCE_S_PER_1M_ROWS = 5.5  # 1M rows x 100 trees, 2 cores (the reference figure)
FEATURES, TREES, NTHREAD = 30, 100, 2


def synthetic(rows: int, features: int = FEATURES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, features) float32 with 2% NaN, and 0/1 labels from a known logistic model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    w = rng.normal(0.0, 1.0, features) * (rng.random(features) < 0.5)  # half the features matter
    logit = -2.0 + x @ w / np.sqrt(features) + 0.5 * np.sin(x[:, 0] * x[:, 1])  # a little interaction
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan  # missing values, as in real feature rows
    return x, y


def run(quick: bool = False) -> dict:
    """Train once and return {rows, features, trees, nthread, dmatrix_s, train_s, reference_s, ratio, ...}."""
    import xgboost as xgb

    rows = 200_000 if quick else 1_000_000
    load_before = os.getloadavg()[0]
    print(f"bench train (ranker): {rows:,} rows x {FEATURES} features x {TREES} trees, "
          f"xgboost {xgb.__version__} hist, nthread={NTHREAD}, {os.cpu_count()} cpus, load {load_before:.2f}", flush=True)
    t = time.perf_counter()
    x, y = synthetic(rows)
    print(f"  synthetic data: {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    dtrain = xgb.DMatrix(x, label=y, nthread=NTHREAD)
    dmatrix_s = time.perf_counter() - t
    print(f"  DMatrix: {dmatrix_s:.2f} s", flush=True)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.3,
              "max_bin": 256, "nthread": NTHREAD, "seed": 0, "eval_metric": "logloss"}
    marks: list[float] = []

    class _Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            marks.append(time.perf_counter())
            if (epoch + 1) % 25 == 0:
                print(f"  trees {epoch + 1:>3}/{TREES}: {marks[-1] - t0:.2f} s", flush=True)
            return False

    t0 = time.perf_counter()
    booster = xgb.train(params, dtrain, num_boost_round=TREES, callbacks=[_Progress()])
    train_s = time.perf_counter() - t0
    reference_s = REFERENCE_S_PER_1M_ROWS * rows / 1_000_000
    result = {
        "rows": rows, "features": FEATURES, "trees": booster.num_boosted_rounds(), "nthread": NTHREAD,
        "xgboost": xgb.__version__, "dmatrix_s": round(dmatrix_s, 3), "train_s": round(train_s, 3),
        "first_tree_s": round(marks[0] - t0, 3),  # includes the quantile sketch
        "rows_x_trees_per_s": round(rows * TREES / train_s),
        "reference_s": round(reference_s, 3), "ratio": round(train_s / reference_s, 2),
        # Other work on the same cores slows OpenMP a lot (threads wait on each other): read the
        # ratio together with the load the machine had.
        "loadavg_1m_before": round(load_before, 2), "cpus": os.cpu_count(),
    }
    print(f"  trained in {train_s:.2f} s (reference {reference_s:.2f} s, ratio {result['ratio']})", flush=True)
    return result
