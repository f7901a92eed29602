"""`eightbox bench quality --dataset simulator|movielens-100k`: two-tower retrieval beside
popularity, random, ItemKNN and (simulator only) the oracle, on one temporal split, in one run.

* simulator: a seeded marketplace; interactions (clicks, engagements) before the cut train every
  model, each user's new items after it are the truth; the oracle ranks by true click probability.
* movielens-100k: temporal leave-last-out (each user's last rating is the test item, as in the
  shared loader's ``temporal_split``); P@10 and NDCG@10 are reported for every model, so the
  published baselines (Dacrema et al. 2019: TopPop P@10 0.191, ItemKNN P@10 0.333, under their
  protocol — a random 80/20 holdout, not ours) can be set beside them with that caveat.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pandas as pd

from eightbox.training.evaluate import retrieval_quality
from eightbox.training.interactions import interactions_from_events, items_from_events, split_at


def _fit_and_index(train: pd.DataFrame, items: pd.DataFrame, epochs: int, seed: int):
    from eightbox.retrieval.ann_index import AnnIndex
    from eightbox.training.two_tower import TwoTower, TwoTowerConfig, print_epoch

    model = TwoTower.fit(train, items, TwoTowerConfig(epochs=epochs, seed=seed), progress=print_epoch)
    ids, vectors = model.item_embeddings(items)
    return model, AnnIndex.build(ids, vectors, encoder_version=model.encoder_version), ids


def simulator(quick: bool = False, seed: int = 3) -> dict:
    from eightbox.ingest.simulator import Marketplace, SimConfig

    cfg = SimConfig(seed=seed, n_users=600 if quick else 2000, n_items=400 if quick else 1000)
    market = Marketplace(cfg)
    hours = 48 if quick else 96
    print(f"quality/simulator: {cfg.n_users} users, {cfg.n_items} items, {hours} simulated hours ...", flush=True)
    events = market.bootstrap_events() + list(market.simulate(hours=hours))
    inter, items = interactions_from_events(events), items_from_events(events)
    cut = cfg.start + timedelta(hours=hours * 0.8)
    train, test = split_at(inter, cut)
    model, index, ids = _fit_and_index(train, items, epochs=6 if quick else 10, seed=seed)
    report = retrieval_quality(model, index, train, test, ids, cut, itemknn=True, extra=True,
                               oracle=lambda u, cands: market.click_probabilities(u, cands, 0, at=cut))
    report["split"] = {"kind": "global time cut", "cut": cut.isoformat(), "train_rows": len(train),
                       "test_rows": len(test)}
    return report


def movielens(quick: bool = False, seed: int = 0) -> dict:
    from eightbox.ingest.movielens import load_movielens_100k, movielens_events, shared_movielens_path, temporal_split

    path = shared_movielens_path()
    ml = load_movielens_100k(path)
    events = movielens_events(ml)
    inter, items = interactions_from_events(events), items_from_events(events)
    train, test = temporal_split(inter)
    print(f"quality/movielens-100k: {inter['user_id'].nunique()} users, {len(items)} items; "
          f"leave-last-out: {len(train)} train / {len(test)} test ...", flush=True)
    model, index, ids = _fit_and_index(train, items, epochs=8 if quick else 20, seed=seed)
    as_of = test.set_index("user_id")["event_time"].to_dict()  # history strictly before each user's test item
    report = retrieval_quality(model, index, train, test, ids, as_of, itemknn=True, extra=True)
    report["split"] = {"kind": "temporal leave-last-out", "train_rows": len(train), "test_rows": len(test)}
    return report


def run(dataset: str = "simulator", quick: bool = False) -> dict:
    started = time.monotonic()
    if dataset == "simulator":
        report = simulator(quick)
    elif dataset == "movielens-100k":
        report = movielens(quick)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: simulator or movielens-100k")
    report["dataset"], report["wall_s"] = dataset, round(time.monotonic() - started, 1)
    return report
