"""The serving bench's own world: a 100k-item catalog, trained, registered and online like a real one.

`simulate(params)` is pure NumPy/pandas and deterministic (same params, same frames): the
simulator's `World` (ingest/simulator) draws the users', items' and creators' latent geometry,
categories and Zipf popularity; visits (users by their activity, times uniform over `days` before
`END`) each see a slate picked from a candidate pool (half by popularity, half uniform) by
relevance plus noise, and the simulator's `ClickModel` decides clicks and engagements.

`features(sim)` computes every feature table of `features/specs.py` as of `END` from those
impressions, clicks and engagements (the specs' keys, events and window sizes; the derived columns
by their reference definitions): the values serving reads, for all users and all items. They are
*not* point-in-time: the ranker learns from impressions joined with these end-of-window values,
which is leakage a quality figure could not tolerate and a latency bench does not care about.

`ensure(settings, params)` makes the world real on the bench's stack: the two-tower
(`TwoTower.fit`), its FAISS index (`AnnIndex.build`: IVF-Flat at 100k), the multi-task ranker, the
catalog and co-visitation components and the NumPy user tower go into one bundle, cached under
``<home>/worlds/<key>/`` (key = hash of the params); the bundle is registered in MLflow and promoted
to champion, and the feature tables are written to Redis through Feast (`write_to_online_store`).
Each step is skipped when already done: a cached bundle, a champion holding this bundle, and
online values that match the cached tables.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from eightbox.settings import Settings

FORMAT = 1  # bump when the generation changes: it is part of every cache key
END = datetime(2024, 3, 1, tzinfo=timezone.utc)  # the world's "now": features are as of this instant
Progress = Callable[[str], None]


@dataclass(frozen=True)
class WorldParams:
    n_items: int = 100_000
    n_users: int = 20_000
    n_categories: int = 24
    n_creators: int = 2_000
    visits: int = 60_000  # slates shown; impressions = visits × slate
    slate: int = 10
    pool: int = 60  # candidates a slate is picked from
    days: float = 14.0  # visits are spread over this many days before END
    tower_epochs: int = 2
    ranker_rounds: int = 100
    seed: int = 0

    @classmethod
    def for_catalog(cls, n_items: int) -> WorldParams:
        """The default world, or one with another catalog size and users, creators and traffic
        scaled down with it (never up: 100k items is the issue's size)."""
        if n_items < 1_000:
            raise ValueError(f"a bench world needs at least 1,000 items, not {n_items}")
        if n_items >= cls.n_items:
            return cls(n_items=n_items)
        share = n_items / cls.n_items
        return cls(n_items=n_items, n_users=max(1_000, int(cls.n_users * share)),
                   n_creators=max(50, int(cls.n_creators * share)), visits=max(5_000, int(cls.visits * share)))

    def key(self) -> str:
        blob = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Simulated:
    items: pd.DataFrame  # `items_from_events` columns, one row per item
    impressions: pd.DataFrame  # user_id, item_id, category, creator_id, position, event_time, click, engaged
    engagements: pd.DataFrame  # user_id, item_id, category, creator_id, event_time (after the click)


def simulate(p: WorldParams) -> Simulated:
    """The catalog and the traffic of one world (deterministic in `p`)."""
    from eightbox.ingest.simulator import ClickModel, SimConfig, category_name, creator_id, item_id, user_id
    from eightbox.ingest.simulator.world import World

    cfg = SimConfig(seed=p.seed, n_users=p.n_users, n_items=p.n_items, n_categories=p.n_categories,
                    n_creators=p.n_creators, slate_size=p.slate)
    world_ss, visit_ss = np.random.SeedSequence(p.seed).spawn(2)
    world, rng = World(cfg, np.random.default_rng(world_ss)), np.random.default_rng(visit_ss)
    item_vec, user_vec = world.item_vec.view, world.user_vec.view
    cats = np.array([category_name(c) for c in range(p.n_categories)])
    creators = np.array([creator_id(c) for c in range(p.n_creators)])
    item_ids = np.array([item_id(i) for i in range(p.n_items)])
    user_ids = np.array([user_id(u) for u in range(p.n_users)])
    item_cat, item_creator = cats[world.item_category.view], creators[world.item_creator.view]
    # Publication over the 90 days before END, a few hundred items within its last day (fresh).
    published = END - pd.to_timedelta(rng.uniform(0.01, 90.0, p.n_items), unit="D")
    items = pd.DataFrame({"item_id": item_ids, "category": item_cat, "creator_id": item_creator,
                          "content_vector": list(world.item_content.view.astype(np.float32)),
                          "published_at": published})

    activity = world.user_activity.view / world.user_activity.view.sum()
    popularity = world.item_popularity.view / world.item_popularity.view.sum()
    click_model = ClickModel(cfg)
    positions = np.arange(p.slate)
    parts = []
    for start in range(0, p.visits, 10_000):  # (chunk, pool, dim) floats stay under ~100 MB
        n = min(10_000, p.visits - start)
        users = rng.choice(p.n_users, size=n, p=activity)
        half = p.pool // 2
        pool = np.concatenate([rng.choice(p.n_items, size=(n, half), p=popularity),
                               rng.integers(0, p.n_items, size=(n, p.pool - half))], axis=1)
        relevance = np.einsum("npd,nd->np", item_vec[pool], user_vec[users])
        noisy = relevance + rng.gumbel(scale=0.3, size=relevance.shape)
        pick = np.argsort(-noisy, axis=1)[:, : p.slate]  # (n, slate) best first: duplicates possible, as in a pool
        slate, rel = np.take_along_axis(pool, pick, 1), np.take_along_axis(relevance, pick, 1)
        clicked = rng.random(rel.shape) < click_model.click_probability(rel, world.item_pop_z.view[slate], positions)
        engaged = clicked & (rng.random(rel.shape) < click_model.engagement_probability(rel))
        seconds = rng.uniform(0, p.days * 86_400, n)
        parts.append(pd.DataFrame({
            "user": np.repeat(users, p.slate), "item": slate.ravel(), "position": np.tile(positions, n),
            "event_time": END - pd.to_timedelta(np.repeat(seconds, p.slate), unit="s"),
            "click": clicked.ravel().astype(np.int64), "engaged": engaged.ravel().astype(np.int64)}))
    frame = pd.concat(parts, ignore_index=True)
    impressions = pd.DataFrame({"user_id": user_ids[frame["user"]], "item_id": item_ids[frame["item"]],
                                "category": item_cat[frame["item"]], "creator_id": item_creator[frame["item"]],
                                "position": frame["position"], "event_time": frame["event_time"],
                                "click": frame["click"], "engaged": frame["engaged"]})
    eng = impressions[impressions["engaged"] == 1].drop(columns=["position", "click", "engaged"])
    # An engagement comes minutes after its click, never past END (the features' instant).
    delay = pd.to_timedelta(rng.exponential(20.0, len(eng)), unit="min")
    eng = eng.assign(event_time=(eng["event_time"] + delay).clip(upper=pd.Timestamp(END) - timedelta(seconds=1)))
    return Simulated(items, impressions, eng.reset_index(drop=True))


def interactions(sim: Simulated) -> pd.DataFrame:
    """Clicks and engagements in `interactions_from_events` columns (what the towers learn from)."""
    from eightbox.training.interactions import CLICK, DEFAULT_WEIGHTS, ENGAGE, INTERACTION_COLUMNS

    clicks = sim.impressions[sim.impressions["click"] == 1].assign(kind=CLICK, weight=DEFAULT_WEIGHTS[CLICK])
    engages = sim.engagements.assign(kind=ENGAGE, weight=DEFAULT_WEIGHTS[ENGAGE])
    out = pd.concat([clicks, engages], ignore_index=True)[list(INTERACTION_COLUMNS)]
    return out.sort_values("event_time", kind="stable").reset_index(drop=True)


def features(sim: Simulated) -> dict[str, pd.DataFrame]:
    """Every feature table (specs.TABLE_KEYS) as of END: one row per entity, ``event_timestamp`` = END.
    In the daily tables every item, creator and user gets a row (zero counts included); pairs and
    the session tables only rows that had events in their window, as the stream writes them."""
    from eightbox.features import specs
    from eightbox.features.derived import affinity, trending

    events = {"impression_served": sim.impressions, "item_clicked": sim.impressions[sim.impressions["click"] == 1],
              "item_engaged": sim.engagements}
    every = {"item_id": sim.items["item_id"], "creator_id": pd.Series(sorted(sim.items["creator_id"].unique())),
             "user_id": pd.Series(sorted(sim.impressions["user_id"].unique()))}
    out: dict[str, pd.DataFrame] = {}
    for table, windowed in specs.by_table((*specs.DAILY, *specs.STREAMING)).items():
        keys = list(specs.TABLE_KEYS[table])
        columns = {}
        for spec in windowed:
            rows = pd.concat([events[e] for e in spec.events])
            inside = rows[rows["event_time"] >= END - spec.size]
            columns[spec.name] = inside.groupby(keys).size()
        frame = pd.DataFrame(columns).fillna(0).astype(np.int64)
        if table.endswith("_daily") and len(keys) == 1:  # one row per entity, zero counts included
            frame = frame.reindex(pd.Index(every[keys[0]], name=keys[0]), fill_value=0)
        out[table] = frame.reset_index()
    users, uc = out["user_daily"].set_index("user_id"), out["user_category_daily"]
    uc["uc_affinity_30d"] = [affinity(e, t) for e, t in
                             zip(uc["uc_engagements_30d"], users["user_engagements_30d"].reindex(uc["user_id"]))]
    item = out["item_daily"]
    item["item_ctr_1d"] = specs.smoothed_ctr(item["item_clicks_1d"], item["item_impressions_1d"])
    item["item_ctr_7d"] = specs.smoothed_ctr(item["item_clicks_7d"], item["item_impressions_7d"])
    item["item_popularity_7d"] = item["item_engagements_7d"].astype(np.float64)
    item["item_trending"] = trending(item["item_clicks_1d"], item["item_clicks_7d"])
    published = sim.items.set_index("item_id")["published_at"].reindex(item["item_id"])
    item["item_age_days"] = ((END - published) / pd.Timedelta(days=1)).to_numpy()
    creator = out["creator_daily"]
    creator["creator_ctr_7d"] = specs.smoothed_ctr(creator["creator_clicks_7d"], creator["creator_impressions_7d"])
    made = sim.items.groupby("creator_id").size()
    creator["creator_items"] = made.reindex(creator["creator_id"]).fillna(0).astype(np.int64).to_numpy()
    newest = sim.engagements.sort_values("event_time", ascending=False, kind="stable")
    recent = newest.groupby("user_id", sort=True)["item_id"].agg(lambda s: list(s[: specs.LAST_N_ENGAGED]))
    out["user_recent"] = recent.rename("last_engaged_items").reset_index()
    for table, frame in out.items():
        frame[specs.TIMESTAMP] = END
        out[table] = frame[[*specs.TABLE_KEYS[table], specs.TIMESTAMP, *specs.table_features(table)]]
    return out


def ranker_examples(sim: Simulated, tables: dict[str, pd.DataFrame], feature_names: list[str],
                    max_rows: int = 300_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid): impressions (a sample of at most `max_rows`) with every ranker feature joined
    by its table's keys, labels click / engaged and the position; valid = the last fifth in time."""
    from eightbox.features import specs

    rows = sim.impressions.sample(n=min(max_rows, len(sim.impressions)), random_state=seed)
    for table, frame in tables.items():
        wanted = [f for f in specs.table_features(table) if f in feature_names]
        if wanted:
            rows = rows.merge(frame[[*specs.TABLE_KEYS[table], *wanted]], on=list(specs.TABLE_KEYS[table]), how="left")
    rows = rows.sort_values("event_time", kind="stable").reset_index(drop=True)
    rows[feature_names] = rows[feature_names].astype(np.float64)
    cut = int(len(rows) * 0.8)
    return rows.iloc[:cut].reset_index(drop=True), rows.iloc[cut:].reset_index(drop=True)


# --- making it real on a stack ------------------------------------------------------------------

def world_dir(settings: Settings, p: WorldParams) -> Path:
    return settings.home / "worlds" / p.key()


def build(settings: Settings, p: WorldParams, progress: Progress = print) -> Path:
    """Simulate, train and write the bundle and feature tables under `world_dir` (replacing a partial
    one); ``world.json`` is written last, so its presence marks a complete world."""
    from eightbox.features.specs import LAST_N_ENGAGED
    from eightbox.ranking.multitask import MultiTaskRanker
    from eightbox.retrieval.ann_index import AnnIndex
    from eightbox.serving.user_encoder import export_user_tower
    from eightbox.training.bundle import ComponentSpec, save_component, write_bundle
    from eightbox.training.covisitation import Covisitation, ItemCatalog
    from eightbox.training.examples import service_features
    from eightbox.training.pipeline import MONOTONE
    from eightbox.training.two_tower import TwoTower, TwoTowerConfig

    root = world_dir(settings, p)
    shutil.rmtree(root, ignore_errors=True)
    (root / "features").mkdir(parents=True)
    t0 = t = time.monotonic()

    def done(what: str) -> None:
        nonlocal t
        progress(f"  {what} ({time.monotonic() - t:.0f} s)")
        t = time.monotonic()

    sim = simulate(p)
    inter = interactions(sim)
    done(f"simulated {p.n_items:,} items, {p.n_users:,} users, {len(sim.impressions):,} impressions → "
         f"{int(sim.impressions['click'].sum()):,} clicks, {len(sim.engagements):,} engagements")
    tables = features(sim)
    for table, frame in tables.items():
        frame.to_parquet(root / "features" / f"{table}.parquet", index=False)
    done("feature tables as of " + f"{END:%Y-%m-%d}: " + ", ".join(f"{k} {len(v):,}" for k, v in tables.items()))

    engaged = inter[inter["kind"] == "engage"]
    tower = TwoTower.fit(inter, sim.items, TwoTowerConfig(epochs=p.tower_epochs, seed=p.seed, n_recent=LAST_N_ENGAGED),
                         history=engaged, progress=lambda s: progress(
                             f"  two-tower epoch {s.epoch}/{s.epochs}: loss {s.loss:.3f} ({s.seconds:.0f} s)"))
    ids, vectors = tower.item_embeddings(sim.items)
    index = AnnIndex.build(ids, vectors, encoder_version=tower.encoder_version)
    done(f"two-tower on {len(inter):,} interactions; index {index.metadata.get('index_type')} over {len(ids):,} items")

    names = service_features("ranker_v1")
    train_df, valid_df = ranker_examples(sim, tables, names, seed=p.seed)
    ranker = MultiTaskRanker(num_boost_round=p.ranker_rounds, seed=p.seed)
    ranker.fit(train_df, valid_df, names, monotone={f: s for f, s in MONOTONE.items() if f in names})
    metrics = {f"{head}_{m}": float(v) for head, ms in ranker.metrics(valid_df).items() for m, v in ms.items()
               if isinstance(v, (int, float)) and np.isfinite(v)}
    done(f"ranker heads {ranker.heads} on {len(train_df):,} rows: click AUC {metrics.get('click_auc', float('nan')):.3f}")

    bundle = root / "bundle"
    comps = {"two_tower": save_component(bundle, "two_tower", tower, version=tower.encoder_version),
             "index": save_component(bundle, "index", index, version=tower.encoder_version),
             "ranker": save_component(bundle, "ranker", ranker, version=ranker.version or "1"),
             "catalog": save_component(bundle, "catalog", ItemCatalog.build(sim.items, inter)),
             "covisitation": save_component(bundle, "covisitation", Covisitation.fit(inter))}
    export_user_tower(tower, bundle / "user_tower")
    comps["user_tower"] = ComponentSpec(loader="eightbox.serving.user_encoder:UserEncoder.load",
                                        path="user_tower", version=tower.encoder_version)
    write_bundle(bundle, name=bundle_name(p), components=comps, metadata={
        "encoder_version": tower.encoder_version, "feature_service": "ranker_v1", "features": names,
        "user_history": {"events": "item_engaged", "n_recent": LAST_N_ENGAGED}, "index": index.metadata,
        "bench_world": asdict(p)})
    (root / "world.json").write_text(json.dumps({"params": asdict(p), "metrics": metrics,
                                                 "seconds": round(time.monotonic() - t0, 1)}, indent=2))
    done("bundle with catalog, co-visitation and the NumPy user tower")
    return root


def bundle_name(p: WorldParams) -> str:
    return f"bench-world-{p.key()}"


def _register(settings: Settings, p: WorldParams, root: Path, progress: Progress) -> str:
    """Register the bundle and make it champion, unless the champion already is this bundle."""
    from mlflow import MlflowClient

    from eightbox.training import registry
    from eightbox.training.gate import GateThresholds

    name = settings.serving_model_name
    champion = registry.champion_version(settings, name)
    if champion is not None:
        tags = MlflowClient(settings.mlflow_uri).get_model_version(name, champion).tags
        if tags.get("bundle_name") == bundle_name(p):
            progress(f"  registry: champion {name} v{champion} is this world's bundle already")
            return champion
    meta = json.loads((root / "world.json").read_text())
    run_id = registry.log_training_run(
        settings, experiment="eightbox-bench-serve", params={**asdict(p), "world_key": p.key()},
        metrics=meta["metrics"], dataset={"name": "bench-world", "version": p.key(), "hash": p.key()},
        feature_service="ranker_v1", code_version=registry.code_version(), reference={},
        bundle_dir=root / "bundle", model_name=name)
    version = registry.version_of_run(settings, run_id)
    verdict = registry.propose(settings, version, GateThresholds(floors={"click_auc": 0.55}), model_name=name)
    if not verdict.passed:
        raise RuntimeError(f"bench world {p.key()}: the gate refused its ranker: {'; '.join(verdict.reasons)}")
    registry.promote(settings, version, model_name=name)
    progress(f"  registry: {name} v{version} (run {run_id}) promoted to champion")
    return version


def _write_online(settings: Settings, root: Path, progress: Progress) -> None:
    """Every cached feature table into Redis through Feast, unless a sample already reads back equal."""
    from eightbox.features import specs
    from eightbox.features.online import OnlineReader
    from eightbox.features.store import apply

    store = apply(settings)
    # Ages alone would not tell two worlds apart (a smaller world's draws are a prefix of a larger
    # one's); impression counts come from the traffic, which differs.
    columns = ["item_age_days", "item_impressions_7d"]
    item_daily = pd.read_parquet(root / "features" / "item_daily.parquet")
    sample = item_daily.iloc[np.linspace(0, len(item_daily) - 1, 200).astype(int)]
    online = OnlineReader(settings, [f"item_daily:{c}" for c in columns], store=store).read_rows(
        {"item_id": sample["item_id"].tolist()})
    read = np.array([online[c] for c in columns], dtype=float).T  # (200, 2); None → nan
    if np.allclose(read, sample[columns].to_numpy(dtype=float), equal_nan=True):
        progress("  online store: this world's features are in Redis already")
        return
    if not np.isnan(read).all():
        # Another world's values, stamped with the same END: Feast would keep them (it skips writes
        # not newer than the stored value), so remove the project's keys first, then re-register it.
        store.teardown()
        store = apply(settings)
        progress("  online store: another world's features removed (Feast teardown)")
    for table in specs.TABLE_KEYS:
        frame, t = pd.read_parquet(root / "features" / f"{table}.parquet"), time.monotonic()
        if table == "user_recent":  # Parquet gives arrays back; Feast's list conversion wants lists
            frame["last_engaged_items"] = frame["last_engaged_items"].map(list)
        for start in range(0, len(frame), 20_000):
            store.write_to_online_store(table, frame.iloc[start:start + 20_000])
        progress(f"  online store: {table} {len(frame):,} rows via Feast ({time.monotonic() - t:.0f} s)")


def ensure(settings: Settings, p: WorldParams, progress: Progress = print) -> Path:
    """The world on the stack of `settings` (MLflow and Redis up): built or loaded, champion, online."""
    root = world_dir(settings, p)
    if (root / "world.json").exists():
        progress(f"bench world {p.key()}: cached at {root}")
    else:
        progress(f"bench world {p.key()}: building under {root} (minutes) ...")
        build(settings, p, progress)
    _register(settings, p, root, progress)
    _write_online(settings, root, progress)
    return root
