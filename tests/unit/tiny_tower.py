"""A two-tower fitted on at most two threads: the shared test machine has two cores."""

from __future__ import annotations

import torch

from eightbox.training.two_tower import TwoTower, TwoTowerConfig


def fit_tower(interactions, items, config: TwoTowerConfig) -> TwoTower:
    """`TwoTower.fit` on the CPU with torch's thread count capped at 2 for the call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        return TwoTower.fit(interactions, items, config, device="cpu")
    finally:
        torch.set_num_threads(threads)
