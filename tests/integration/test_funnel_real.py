"""The serving funnel on real parts: a small bundle trained here (two-tower, FAISS index, multi-task
ranker, catalog, co-visitation) on a simulated marketplace, its features materialized by Feast into
the session's Redis, read back through `OnlineReader`. Then the faults: Redis stopped (and restarted),
the index missing, the ranker missing, each answered without an exception and with its rung named;
and the same bundle loaded back from the MLflow registry.

Feature values are whole-period aggregates of the simulated events (not point in time): this module
tests serving, not training quality.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from eightbox.features import specs
from eightbox.features import store as feature_store
from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.ranking.multitask import MultiTaskRanker
from eightbox.retrieval.ann_index import AnnIndex
from eightbox.serving.breaker import BreakerPolicy, Breakers
from eightbox.serving.funnel import build_funnel
from eightbox.serving.stages import FunnelConfig, StageBudget
from eightbox.serving.models import ModelSet
from eightbox.serving.user_encoder import export_user_tower
from eightbox.training import registry
from eightbox.training.bundle import ComponentSpec, save_component, write_bundle
from eightbox.training.covisitation import Covisitation, ItemCatalog
from eightbox.training.interactions import interactions_from_events, items_from_events
from eightbox.training.two_tower import TwoTowerConfig

from ..unit.tiny_tower import fit_tower

WORLD = SimConfig(seed=5, n_users=150, n_items=300, n_creators=30, sessions_per_hour=150.0)
HOURS = 8.0
FEATURES = ["user_clicks_1d", "item_clicks_1d", "item_impressions_1d", "item_ctr_1d", "item_impressions_7d",
            "item_clicks_15m"]
# Generous limits: this module checks behaviour on a shared 2-core machine, not latency.
CONFIG = FunnelConfig(total_timeout_ms=5000, stages={s: StageBudget(50, 2000) for s in
                                                    ("history", "sources", "features", "rank", "rerank")})


def _events_frame(events, kind: type) -> pd.DataFrame:
    return pd.DataFrame([e.model_dump() for e in events if isinstance(e, kind)])


def _table(table: str, df: pd.DataFrame, at) -> pd.DataFrame:
    """Every column of `table`: the given ones, zeros (or empty lists) for the rest, stamped `at`."""
    out = df.copy()
    out[specs.TIMESTAMP] = at
    for f in specs.table_features(table):
        if f not in out:
            out[f] = [[] for _ in range(len(out))] if f == "last_engaged_items" else 0
    return out


@pytest.fixture(scope="module")
def world(stack, stack_settings, tmp_path_factory):
    """(settings, bundle dir, users with history): features in Redis, a bundle on disk."""
    from eightbox.ingest.schema import ImpressionServed, ItemClicked, ItemEngaged

    settings = stack_settings.model_copy(update={"home": tmp_path_factory.mktemp("funnel-real"),
                                                 "feast_project": f"t{uuid.uuid4().hex[:10]}"})
    market = Marketplace(WORLD)
    events = [*market.bootstrap_events(), *market.simulate(hours=HOURS)]
    end = WORLD.start + timedelta(hours=HOURS)
    clicks, engaged = _events_frame(events, ItemClicked), _events_frame(events, ItemEngaged)
    shown = _events_frame(events, ImpressionServed).sort_values("event_time", ignore_index=True)

    # --- features: whole-period counts per user and item, into the lake's tables, then Feast → Redis
    item_clicks, item_shown = clicks.groupby("item_id").size(), shown.groupby("item_id").size()
    items_df = pd.DataFrame({"item_id": sorted(set(item_shown.index) | set(item_clicks.index))})
    items_df["item_clicks_1d"] = items_df["item_id"].map(item_clicks).fillna(0).astype(int)
    items_df["item_impressions_1d"] = items_df["item_id"].map(item_shown).fillna(0).astype(int)
    items_df["item_impressions_7d"] = items_df["item_impressions_1d"]
    items_df["item_ctr_1d"] = specs.smoothed_ctr(items_df["item_clicks_1d"], items_df["item_impressions_1d"])
    users_df = clicks.groupby("user_id").size().rename("user_clicks_1d").reset_index()
    last_15m = clicks[clicks["event_time"] >= end - timedelta(minutes=15)]
    session = last_15m.groupby("item_id").size().rename("item_clicks_15m").reset_index()
    newest_first = engaged.sort_values("event_time", ascending=False).groupby("user_id")["item_id"]
    recent = newest_first.apply(lambda s: list(dict.fromkeys(s))[:specs.LAST_N_ENGAGED])
    recent = recent.rename("last_engaged_items").reset_index()
    tables = {"item_daily": items_df, "user_daily": users_df, "item_session": session, "user_recent": recent}
    for table, df in tables.items():
        feature_store.write_offline(settings, table, _table(table, df, end), "part-0")
    feature_store.apply(settings)
    feature_store.materialize(settings, WORLD.start - timedelta(days=1), end + timedelta(days=1), list(tables))

    # --- models: the two-tower, its index, a ranker on the same features, catalog, co-visitation
    inter, items = interactions_from_events(events), items_from_events(events)
    tower = fit_tower(inter, items, TwoTowerConfig(dim=16, epochs=2, seed=0))
    ids, vectors = tower.item_embeddings(items)
    index = AnnIndex.build(ids, vectors, use_gpu=False)
    rows = shown.merge(items_df, on="item_id", how="left").merge(users_df, on="user_id", how="left")
    rows = rows.merge(session, on="item_id", how="left")
    pairs = lambda df: set(zip(df["user_id"], df["item_id"]))  # noqa: E731
    clicked, kept = pairs(clicks), pairs(engaged)
    rows["click"] = [float(p in clicked) for p in zip(rows["user_id"], rows["item_id"])]
    rows["engaged"] = [float(p in kept) for p in zip(rows["user_id"], rows["item_id"])]
    rows["value"] = rows["engaged"]
    cut = int(len(rows) * 0.7)
    ranker = MultiTaskRanker(num_boost_round=30, nthread=1, seed=0).fit(rows[:cut], rows[cut:], FEATURES)
    bundle_dir = tmp_path_factory.mktemp("bundle")
    export_user_tower(tower, bundle_dir / "user_tower")  # what the pipeline adds: the NumPy user tower
    comps = {"two_tower": save_component(bundle_dir, "two_tower", tower, version=tower.encoder_version),
             "index": save_component(bundle_dir, "index", index, version=tower.encoder_version),
             "ranker": save_component(bundle_dir, "ranker", ranker, version=ranker.version),
             "catalog": save_component(bundle_dir, "catalog", ItemCatalog.build(items, inter)),
             "covisitation": save_component(bundle_dir, "covisitation", Covisitation.fit(inter)),
             "user_tower": ComponentSpec(loader="eightbox.serving.user_encoder:UserEncoder.load",
                                         path="user_tower", version=tower.encoder_version)}
    write_bundle(bundle_dir, name="funnel-test", components=comps, metadata={
        "encoder_version": tower.encoder_version, "feature_service": "ranker_v1", "features": FEATURES})
    return settings, bundle_dir, recent["user_id"].tolist()[:12]


def _bundle_without(world, tmp_path, component: str):
    _, bundle_dir, _ = world
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    shutil.rmtree(copy / component)
    return ModelSet.from_dir(copy)


def _serve(settings, models, users, *, breakers=None, refresh=True):
    """Recommendations for `users` from a funnel built like the service builds it."""
    async def go():
        funnel = build_funnel(settings, models, CONFIG, breakers=breakers)
        if refresh:
            await asyncio.to_thread(funnel.board.refresh)
        return [await funnel.recommend(u, 10, request_id=f"r-{u}") for u in users], funnel

    return asyncio.run(go())


def _counts_add_up(rec) -> None:
    for s in rec.stages:
        assert s.n_in == s.n_out + s.n_filtered + s.n_deduped, s


def test_the_full_funnel_serves_ranked_items_from_real_redis_and_bundle(world):
    settings, bundle_dir, users = world
    models = ModelSet.from_dir(bundle_dir, item_vectors=True)
    assert not models.problems and len(models.item_vectors) == len(models.catalog)
    assert models.versions["user_tower"] == "numpy", "the ANN query comes from the NumPy user tower"
    recs, funnel = _serve(settings, models, users)
    assert funnel.board.snapshot.trending, "trending items read back from Redis"
    for rec in recs:
        assert rec.rung == "full", [(s.name, s.status, s.detail) for s in rec.stages]
        assert all(s.status == "ok" for s in rec.stages), rec.stages
        assert len(rec.items) == 10 and len({c.item_id for c in rec.items}) == 10
        _counts_add_up(rec)
        assert rec.stage("history").n_out > 0 and rec.stage("source:covisit").n_out > 0
        for c in rec.items:
            assert 0 < c.p_click < 1 and list(c.features) == FEATURES and c.creator_id
        assert not np.isnan([c.features["item_impressions_1d"] for c in rec.items]).all(), "features from Redis"
        assert rec.model_versions["encoder"] == models.versions["encoder"]


def test_with_redis_stopped_the_funnel_falls_back_and_recovers_after_restart(world, stack):
    settings, bundle_dir, users = world
    models = ModelSet.from_dir(bundle_dir)

    async def go():
        funnel = build_funnel(settings, models, CONFIG, breakers=Breakers(default=BreakerPolicy(min_calls=4)))
        await asyncio.to_thread(funnel.board.refresh)  # a snapshot taken while Redis was up
        stack.stop("redis")
        try:
            recs = [await funnel.recommend(u, 10) for u in users[:4]]
            with pytest.raises(Exception):
                funnel.board.refresh()  # the background refresh fails and keeps its snapshot
        finally:
            stack.start("redis", progress=lambda *_: None)
        return recs, funnel

    recs, funnel = asyncio.run(go())
    assert funnel.board.snapshot is not None
    for rec in recs:
        assert rec.rung == "fallback" and len(rec.items) == 10
        assert rec.stage("history").status in ("error", "breaker_open")
        assert rec.stage("features").status in ("error", "timeout", "breaker_open")
        assert rec.stage("source:trending").n_out > 0  # served from the in-memory snapshot
        _counts_add_up(rec)
    assert recs[-1].stage("features").status == "breaker_open"  # 2 calls per request: open after the 2nd
    after, _ = _serve(settings, models, users[:2])
    assert [r.rung for r in after] == ["full", "full"], "Redis is back with its data (append-only file)"


def test_without_the_index_the_ranker_still_ranks_the_other_sources_as_fallback(world, tmp_path):
    settings, _, users = world
    models = _bundle_without(world, tmp_path, "index")
    assert models.index is None and "index" in models.problems
    recs, _ = _serve(settings, models, users[:4])
    for rec in recs:
        assert rec.rung == "fallback" and rec.stage("source:two_tower").status == "skipped"
        assert rec.stage("rank").status == "ok" and len(rec.items) == 10
        _counts_add_up(rec)


def test_without_the_ranker_items_come_in_source_order_as_fallback(world, tmp_path):
    settings, _, users = world
    models = _bundle_without(world, tmp_path, "ranker")
    assert models.ranker is None
    recs, _ = _serve(settings, models, users[:4])
    for rec in recs:
        assert rec.rung == "fallback" and rec.stage("rank").status == "skipped"
        assert len(rec.items) == 10 and all(c.p_click is None for c in rec.items)
        _counts_add_up(rec)


def test_the_champion_bundle_loads_from_the_registry_and_serves_the_full_funnel(world):
    settings, bundle_dir, users = world
    name = f"funnel-test-{uuid.uuid4().hex[:6]}"  # not the pipeline's model name: no champion is taken from it
    run_id = registry.log_training_run(
        settings, experiment="funnel-test", params={}, metrics={}, dataset={}, feature_service="ranker_v1",
        code_version="test", reference={}, bundle_dir=bundle_dir, model_name=name)
    version = registry.version_of_run(settings, run_id)
    registry.promote(settings, version, force=True, model_name=name)
    models = ModelSet.from_registry(settings, "champion", model_name=name)
    assert models.versions["model"] == version and not models.problems
    recs, _ = _serve(settings, models, users[:2])
    assert [r.rung for r in recs] == ["full", "full"]
