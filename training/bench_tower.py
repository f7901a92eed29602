"""The two-tower half of `eightbox bench train`: seconds per epoch on synthetic interactions.

1,000,000 interactions (quick: 200,000) of 50,000 users over 20,000 items with 16-d content
vectors, default `TwoTowerConfig` (dim 32, batch 512, 20 recent items), on CUDA when present.
Only `TwoTower.fit` epochs are timed (the per-epoch seconds it reports); data generation is apart.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd


def synthetic(rows: int, users: int = 50_000, items: int = 20_000, dim: int = 16, seed: int = 0):
    """(interactions, items) frames in the `training.interactions` layout, Zipf-popular items."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    item_idx = rng.choice(items, size=rows, p=pop / pop.sum())
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    inter = pd.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, users, rows)],
        "item_id": [f"i{i}" for i in item_idx],
        "event_time": pd.Timestamp(start) + pd.to_timedelta(np.sort(rng.uniform(0, 30 * 86400, rows)), unit="s"),
        "kind": "click", "weight": 1.0,
    })
    catalog = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(items)], "category": [f"c{i % 20}" for i in range(items)],
        "creator_id": [f"k{i % 500}" for i in range(items)],
        "content_vector": list(rng.normal(size=(items, dim)).astype(np.float32)),
        "published_at": pd.Timestamp(start),
    })
    return inter, catalog


def run(quick: bool = False, epochs: int = 1) -> dict:
    import torch

    from eightbox.training.two_tower import TwoTower, TwoTowerConfig

    rows = 200_000 if quick else 1_000_000
    load_before = os.getloadavg()[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"bench train (two-tower): {rows:,} interactions, {epochs} epoch(s) on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before:.2f}", flush=True)
    t = time.perf_counter()
    inter, items = synthetic(rows)
    data_s = time.perf_counter() - t
    per_epoch: list[float] = []

    def progress(s) -> None:
        per_epoch.append(s.seconds)  # EpochStats.seconds is per epoch
        print(f"  epoch {s.epoch}/{s.epochs}: loss {s.loss:.3f}, {per_epoch[-1]:.1f} s", flush=True)

    t = time.perf_counter()
    TwoTower.fit(inter, items, TwoTowerConfig(epochs=epochs), progress=progress)
    fit_s = time.perf_counter() - t
    return {"rows": rows, "device": device, "epochs": epochs, "data_s": round(data_s, 2),
            "fit_s": round(fit_s, 2), "epoch_s": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
            "rows_per_s": round(rows * epochs / fit_s), "loadavg_1m_before": round(load_before, 2)}
