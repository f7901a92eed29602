"""`eightbox train`: lake → point-in-time dataset → two-tower + ANN index → calibrated ranker →
evaluation beside baselines → bundle → MLflow run, registered version, gate, aliases.

One function, `train(settings, config)`, wires the stages; each stage lives in its own module.
Examples come from the impressions serving logged (with the features it scored) when at least
`MIN_LOGGED_SHARE` of the window's impressions did, else (cold start, or serving just begun) from the
lake's impressions with Feast point-in-time features. The split is
temporal: the two-tower learns from interactions before the validation window, the ranker from the
train window (early stopping and calibration on validation), and every reported figure is on the
test window, which comes strictly after both.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from eightbox.features.specs import LAST_N_ENGAGED
from eightbox.settings import Settings

Progress = Callable[[str], None]

# Relevance features whose rise must never lower a score (checked by the ranker's behaviour tests).
MONOTONE = {"uc_affinity_30d": 1, "uc_clicks_30m": 1, "uc_engagements_7d": 1, "uc_engagements_30d": 1}


def default_thresholds():
    from eightbox.training.gate import GateThresholds

    return GateThresholds(
        floors={"click_auc": 0.55},
        ceilings={"click_ece": 0.05},
        max_drop={"click_auc": 0.02, "two_tower_recall_at_100": 0.10},
        max_rise={"click_logloss": 0.05},
        noise_z=1.645,  # a drop is refused when it is beyond chance at one-sided 95 % (gate.py)
    )


@dataclass(frozen=True)
class TrainConfig:
    as_of: datetime | None = None  # build time; default: the newest event in the lake
    label_delay: timedelta = timedelta(hours=2)  # impressions younger than this are not labelled yet
    attribution_window: timedelta = timedelta(hours=1)  # a click later than this after the impression is not its label
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # of the time span: train / valid / test
    feature_service: str = "ranker_v2"  # features/repo/definitions.py
    tower_epochs: int = 8
    tower_min_steps: int = 50  # optimizer steps at least, on a small window (more epochs; see TwoTower.fit)
    tower_dim: int = 32
    ranker_rounds: int = 300
    seed: int = 0
    experiment: str = "eightbox-training"
    model_name: str = "eightbox-recommender"
    promote: str = "if-first"  # "never" | "if-first" (no champion yet) | "if-gate" (challenger → champion)
    window: timedelta | None = None  # learn only from the last `window` before as_of (None: all history)
    thresholds: object = field(default_factory=default_thresholds)


@dataclass
class TrainResult:
    run_id: str
    version: str
    dataset: str
    metrics: dict
    gate_passed: bool
    gate_reasons: list[str]
    aliases: list[str]
    seconds: dict


def _lake(settings: Settings) -> dict[str, pd.DataFrame]:
    from eightbox.ingest.lake import read_events

    out = {}
    for et in ("impression_served", "item_clicked", "item_engaged", "item_published"):
        df = read_events(settings.lake_dir, et).to_pandas()
        df["event_time"] = pd.to_datetime(df["event_time"], utc=True)
        df["event_type"] = et
        out[et] = df
    if out["impression_served"].empty:
        raise RuntimeError(f"no impressions in the lake at {settings.lake_dir}: run traffic first (`make demo`)")
    return out


# Below this share of the window's impressions carrying the features serving scored, examples come
# from the point-in-time path: a platform that has just started serving has minutes of logged
# impressions beside days of history without them, and the logged path (which leaves the others'
# features empty) trained models that gave every item the same score (a wall-clock run, caught in shadow).
MIN_LOGGED_SHARE = 0.2


def example_source(impressions: pd.DataFrame) -> str:
    """"logged" when enough impressions logged their features (`MIN_LOGGED_SHARE`), else "point_in_time"."""
    logged = impressions["features"].map(lambda f: bool(f) if f is not None else False)
    return "logged" if len(logged) and logged.mean() >= MIN_LOGGED_SHARE else "point_in_time"


def _examples(settings: Settings, lake: dict[str, pd.DataFrame], cfg: TrainConfig, as_of: datetime):
    from eightbox.training import examples, labels

    if example_source(lake["impression_served"]) == "logged":
        frames = {k: v for k, v in lake.items()}
        return "logged", examples.from_logged_impressions(
            frames, as_of=as_of, label_delay=cfg.label_delay, attribution_window=cfg.attribution_window,
            feature_service=cfg.feature_service)
    labelled = labels.attach_labels(lake["impression_served"], lake["item_clicked"], lake["item_engaged"],
                                    cfg.attribution_window, as_of, cfg.label_delay)
    return "point_in_time", examples.from_events_point_in_time(
        settings, labelled, cfg.feature_service, items=lake["item_published"])


def _flat(prefix: str, report: dict) -> dict[str, float]:
    out = {}
    for name, values in report.items():
        for metric, v in values.items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                out[f"{prefix}{name}_{metric}".replace("@", "_at_")] = float(v)
    return out


def train(settings: Settings, config: TrainConfig | None = None, progress: Progress = print) -> TrainResult:
    """Run the whole training pipeline once; returns what was registered and how it was judged."""
    from eightbox.ranking.multitask import MultiTaskRanker
    from eightbox.ranking.value import value_score
    from eightbox.retrieval.ann_index import AnnIndex
    from eightbox.serving.user_encoder import export_user_tower
    from eightbox.training import registry, splits
    from eightbox.training.bundle import ComponentSpec, save_component, write_bundle
    from eightbox.training.covisitation import Covisitation, ItemCatalog
    from eightbox.training.datasets import load_dataset, write_dataset
    from eightbox.training.evaluate import funnel_ndcg, retrieval_quality
    from eightbox.training.interactions import interactions_from_events, items_from_events
    from eightbox.training.reference import training_reference
    from eightbox.training.two_tower import TwoTower, TwoTowerConfig

    cfg, seconds = config or TrainConfig(), {}
    t0 = time.monotonic()

    def stage(name: str) -> None:
        now = time.monotonic()
        seconds[name] = round(now - stage.last, 1)
        stage.last = now
    stage.last = t0

    lake = _lake(settings)
    as_of = pd.Timestamp(cfg.as_of) if cfg.as_of else max(lake[k]["event_time"].max() for k in lake)
    if cfg.window is not None:  # after a drift, what users did before it teaches the wrong tastes
        since = as_of - pd.Timedelta(cfg.window)
        lake = {k: v if k == "item_published" else v[v["event_time"] >= since] for k, v in lake.items()}
    source, examples = _examples(settings, lake, cfg, as_of)
    # The gap keeps a train impression's label (up to one attribution window later) out of validation.
    windows = splits.by_fractions(examples["event_time"], cfg.fractions, gap=cfg.attribution_window)
    parts = splits.split(examples, windows)
    features = [c for c in examples.columns if c in set(_service(cfg.feature_service))]
    path = write_dataset(parts, "ranker-examples", settings=settings, windows=windows,
                         feature_columns=features, feature_service=cfg.feature_service,
                         label_delay=cfg.label_delay, attribution_window=cfg.attribution_window, source=source)
    data = load_dataset(path)
    train_df, valid_df, test_df = data.train, data.valid, data.test
    progress(f"  dataset {data.manifest['name']} v{data.manifest['version']} ({source} features): "
             f"{len(train_df)} train / {len(valid_df)} valid / {len(test_df)} test rows, "
             f"{len(features)} features, as of {as_of:%Y-%m-%d %H:%M}")
    stage("dataset")

    # --- retrieval: the towers learn from everything before the validation window -------------
    events = pd.concat([lake["item_clicked"], lake["item_engaged"]], ignore_index=True)
    inter = interactions_from_events(events)
    inter = inter[inter["event_time"] <= as_of]
    items = items_from_events(lake["item_published"])
    tower_train = inter[inter["event_time"] < windows.valid.start]
    tower_test = inter[(inter["event_time"] >= windows.test.start) & (inter["event_time"] < windows.test.end)]
    # The user tower's bag is what serving will read: the streaming `last_engaged_items` (engagements
    # only, the newest LAST_N_ENGAGED), not every click, so training and serving see the same input.
    engaged = tower_train[tower_train["kind"] == "engage"]
    tower_valid = inter[(inter["event_time"] >= windows.valid.start) & (inter["event_time"] < windows.valid.end)]
    tower = TwoTower.fit(tower_train, items, TwoTowerConfig(dim=cfg.tower_dim, epochs=cfg.tower_epochs,
                                                            seed=cfg.seed, n_recent=LAST_N_ENGAGED),
                         history=engaged, min_steps=cfg.tower_min_steps,
                         validate=_recall_on(tower_valid, tower_train, items, windows.valid.start, engaged),
                         progress=lambda s: progress(f"  two-tower epoch {s.epoch}/{s.epochs}: loss {s.loss:.3f}"
                                                     f", valid recall@100 {s.valid:.3f} ({s.seconds:.1f} s)"))
    progress(f"  two-tower: kept epoch {tower.best_epoch} (best recall@100 on the validation window)")
    ids, vectors = tower.item_embeddings(items)
    index = AnnIndex.build(ids, vectors, encoder_version=tower.encoder_version)
    retrieval = retrieval_quality(tower, index, tower_train, tower_test, ids, windows.test.start,
                                  history=inter[(inter["kind"] == "engage") & (inter["event_time"] < windows.test.start)])
    progress(f"  index {index.metadata.get('index_type')} over {len(ids)} items; test recall@100: two-tower "
             f"{retrieval['two_tower']['recall@100']:.3f}, popularity {retrieval['popularity']['recall@100']:.3f}, "
             f"random {retrieval['random']['recall@100']:.3f} ({retrieval['users']['evaluated']} users)")
    # Serving's non-model sources: the catalog (availability, creators, fresh items, popularity and
    # static rungs) and co-visitation, from the towers' window (nothing from validation or test).
    catalog = ItemCatalog.build(items[items["published_at"] <= as_of], tower_train)
    covisitation = Covisitation.fit(tower_train)
    stage("retrieval")

    # --- ranking: train window, early stopping and calibration on validation --------------------
    ranker = MultiTaskRanker(num_boost_round=cfg.ranker_rounds, seed=cfg.seed)
    ranker.fit(train_df, valid_df, features, monotone={f: s for f, s in MONOTONE.items() if f in features})
    heads = ranker.metrics(test_df)
    pred = ranker.predict(test_df)
    popularity = test_df["item_clicks_7d"].fillna(0).to_numpy() if "item_clicks_7d" in test_df else \
        np.zeros(len(test_df))
    funnel = funnel_ndcg(test_df, {"ranker": value_score(pred), "popularity": popularity}, seed=cfg.seed)
    click = heads["click"]
    progress(f"  ranker heads {ranker.heads}: click AUC {click['auc']:.3f}, ECE {click.get('ece_raw', float('nan')):.4f}"
             f" → {click['ece']:.4f} calibrated ({click.get('method', '?')}); slate NDCG@10 ranker "
             f"{funnel['ranker']:.3f} vs popularity {funnel['popularity']:.3f} vs random {funnel['random']:.3f}")
    stage("ranking")

    # --- bundle, reference, registry ------------------------------------------------------------
    metrics = {**_flat("", {k: v for k, v in retrieval.items() if k != "users"}),
               **_flat("", {h: m for h, m in heads.items()}),
               **{f"funnel_ndcg10_{k}": v for k, v in funnel.items() if np.isfinite(v)}}
    reference = training_reference(train_df, features, {"p_click": ranker.predict(train_df)["p_click"].to_numpy()})
    with tempfile.TemporaryDirectory(prefix="eightbox-bundle-") as tmp:
        comps = {"two_tower": save_component(tmp, "two_tower", tower, version=tower.encoder_version),
                 "index": save_component(tmp, "index", index, version=tower.encoder_version),
                 "ranker": save_component(tmp, "ranker", ranker, version=ranker.version or "1"),
                 "catalog": save_component(tmp, "catalog", catalog),
                 "covisitation": save_component(tmp, "covisitation", covisitation)}
        # The user tower again, in NumPy: what serving encodes each request with (no torch call).
        export_user_tower(tower, Path(tmp) / "user_tower")
        comps["user_tower"] = ComponentSpec(loader="eightbox.serving.user_encoder:UserEncoder.load",
                                            path="user_tower", version=tower.encoder_version)
        write_bundle(tmp, name=cfg.model_name, components=comps, metadata={
            "encoder_version": tower.encoder_version, "feature_service": cfg.feature_service,
            "features": features, "user_history": {"events": "item_engaged", "n_recent": LAST_N_ENGAGED},
            "dataset_version": data.manifest["version"],
            "dataset_hash": data.manifest["content_hash"], "index": index.metadata})
        run_id = registry.log_training_run(
            settings, experiment=cfg.experiment, metrics=metrics, feature_service=cfg.feature_service,
            params={**{k: v for k, v in asdict(cfg).items() if k != "thresholds"}, "source": source,
                    "n_features": len(features)},
            dataset={"name": data.manifest["name"], "version": data.manifest["version"],
                     "hash": data.manifest["content_hash"], "path": str(path), "windows": windows.to_dict()},
            code_version=registry.code_version(), reference=reference, bundle_dir=tmp, model_name=cfg.model_name)
    version = registry.version_of_run(settings, run_id)
    first = registry.champion_version(settings, cfg.model_name) is None
    # The champion judged on this candidate's own test window: after a drift, its metrics from its
    # own (older, easier or harder) window would make the gate compare two different exams.
    # On serving's own logs the champion chose what users could click, so its retrieval recalls the
    # test window's items by construction (exposure bias): there the towers are judged online, by the
    # ladder's canary, and the gate compares the ranker only (it re-orders the same impressions).
    retrieval_judged = source != "logged"
    same_window = None if first else _champion_on(
        settings, cfg, test_df, lambda tower, index: retrieval_quality(
            tower, index, tower_train, tower_test, list(index.ids), windows.test.start,
            history=inter[(inter["kind"] == "engage") & (inter["event_time"] < windows.test.start)]),
        progress, retrieval=retrieval_judged)
    verdict = registry.propose(settings, version, cfg.thresholds, model_name=cfg.model_name,
                               champion_metrics=same_window,
                               basis="champion on this test window" + ("" if retrieval_judged else
                                     ", rankers only (it served this window: its retrieval is judged online)"))
    aliases = ["challenger"] if verdict.passed else []
    if verdict.passed and (cfg.promote == "if-gate" or (cfg.promote == "if-first" and first)):
        registry.promote(settings, version, model_name=cfg.model_name)
        aliases = ["champion"]
    stage("registry")
    seconds["total"] = round(time.monotonic() - t0, 1)
    return TrainResult(run_id=run_id, version=version, dataset=str(path), metrics=metrics,
                       gate_passed=verdict.passed, gate_reasons=list(verdict.reasons), aliases=aliases,
                       seconds=seconds)


def _recall_on(valid: pd.DataFrame, train: pd.DataFrame, items: pd.DataFrame, as_of, history: pd.DataFrame):
    """The towers' early-stopping score: recall@100 on the validation window's interactions (users'
    train items excluded, as in the test figure), or a constant when that window has none."""
    from eightbox.retrieval.ann_index import AnnIndex
    from eightbox.training.evaluate import held_out_targets, two_tower_lists
    from eightbox.training.topk_metrics import recall_at_k

    users, relevant, seen = held_out_targets(train, valid)

    def score(tower) -> float:
        if not users:
            return 0.0  # nothing tells epochs apart: every epoch ties, and a tie keeps the last one
        ids, vectors = tower.item_embeddings(items)
        index = AnnIndex.build(ids, vectors, encoder_version=tower.encoder_version)
        return recall_at_k(two_tower_lists(tower, index, users, as_of, history, seen, 100), relevant, 100)
    return score


def _champion_on(settings: Settings, cfg: TrainConfig, test_df: pd.DataFrame, quality, progress: Progress,
                 retrieval: bool = True):
    """The champion's gate metrics on the candidate's test window (same names as the candidate's), or
    None when its bundle cannot be evaluated there (then the gate falls back to its logged metrics).
    Without `retrieval` its two-tower figures are left out, so the gate does not compare them."""
    from eightbox.training import registry

    try:
        bundle = registry.load_by_alias(settings, registry.CHAMPION, model_name=cfg.model_name) \
            .unwrap_python_model().bundle
        metrics = _flat("", dict(bundle.component("ranker").metrics(test_df)))
        if retrieval:
            metrics |= _flat("", {"two_tower": quality(bundle.component("two_tower"), bundle.component("index"))["two_tower"]})
    except Exception as exc:  # an older bundle layout, a feature it lacks: judge against its own run
        progress(f"  champion not evaluated on this test window ({type(exc).__name__}: {exc}); "
                 "the gate compares with its logged metrics")
        return None
    progress(f"  champion on this test window: click AUC {metrics.get('click_auc', float('nan')):.3f}, "
             + (f"two-tower recall@100 {metrics.get('two_tower_recall_at_100', float('nan')):.3f}" if retrieval else
                "two-tower not compared (it chose what this window's users saw: judged online instead)"))
    return metrics


def _service(name: str) -> list[str]:
    from eightbox.training.examples import service_features

    return service_features(name)
