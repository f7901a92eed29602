"""`eightbox train` end to end on real engines, at small scale: a simulated marketplace (300 users,
200 items, 12 hours) written straight into a lake of its own in the archiver's layout, Spark
backfills (daily and minute windows) and Feast over them, then `training.pipeline.train` on the
cold-start path (the simulator logs no features, so examples join Feast point in time) into the
session's MLflow. The world and the first training run are built once per module; a second run,
held to a bar it cannot meet, is built once as well.

The pipeline registers under the fixed model name ``eightbox-recommender``: this module assumes
no other module of the session trains through it (its fixture checks that no champion exists).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import date

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from eightbox.features import store as feature_store
from eightbox.features.backfill import backfill_days, streaming_backfill
from eightbox.features.backfill_bench import write_lake
from eightbox.features.spark_session import spark_session
from eightbox.ingest.lake import read_events
from eightbox.ingest.schema import to_wire
from eightbox.ingest.simulator import Marketplace, SimConfig
from eightbox.retrieval.ann_index import AnnIndex, EncoderVersionMismatch
from eightbox.settings import REPO_ROOT
from eightbox.training import bundle as bundle_module
from eightbox.training import registry
from eightbox.training.datasets import load_dataset
from eightbox.training.gate import GateThresholds
from eightbox.training.interactions import items_from_events
from eightbox.training.pipeline import TrainConfig, train

WORLD = SimConfig(seed=3, n_users=300, n_items=200, n_creators=30, sessions_per_hour=120.0)
HOURS = 12.0  # 2024-01-01 00:00 .. 12:00 UTC: one lake day
EPOCHS = 4
UNREACHABLE = GateThresholds(floors={"click_auc": 0.99})


def _trained(settings, config: TrainConfig):
    """Run the pipeline; returns (TrainResult, {component: the object it put in its bundle})."""
    bundled: dict = {}
    original = bundle_module.save_component

    def spy(root, name, obj, **kwargs):
        bundled[name] = obj
        return original(root, name, obj, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_module, "save_component", spy)  # train() imports it at call time
        result = train(settings, config, progress=lambda _: None)
    return result, bundled


@pytest.fixture(scope="module")
def world(stack, stack_settings, tmp_path_factory):
    """A lake of 12 simulated hours, backfilled by Spark, with the Feast registry applied."""
    settings = stack_settings.model_copy(update={"home": tmp_path_factory.mktemp("train-pipeline"),
                                                 "feast_project": f"t{uuid.uuid4().hex[:10]}"})
    market = Marketplace(WORLD)
    write_lake(settings.lake_dir, [json.loads(to_wire(e)) for e in
                                   [*market.bootstrap_events(), *market.simulate(hours=HOURS)]])
    spark = spark_session(settings)
    try:
        backfill_days(settings, date(2024, 1, 1), date(2024, 1, 1), spark)
        streaming_backfill(settings, date(2024, 1, 1), date(2024, 1, 2), spark)
    finally:
        spark.stop()
    feature_store.apply(settings)
    assert registry.champion_version(settings) is None, "another run already holds champion in this MLflow"
    return settings


@pytest.fixture(scope="module")
def first(world):
    return _trained(world, TrainConfig(tower_epochs=EPOCHS))


@pytest.fixture(scope="module")
def second(world, first):
    """Another seed (so another encoder), gated against a floor no model here reaches, with
    ``promote="if-gate"``: only the gate stands between it and champion."""
    return _trained(world, TrainConfig(tower_epochs=EPOCHS, seed=1, thresholds=UNREACHABLE, promote="if-gate"))


def _client(settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri)


def test_a_first_training_run_on_a_fresh_lake_is_registered_gated_and_becomes_champion(world, first):
    result, _ = first
    assert result.gate_passed and result.gate_reasons == [] and result.aliases == ["champion"]
    assert registry.champion_version(world) == result.version

    data = load_dataset(result.dataset)
    manifest = data.manifest
    assert manifest["source"] == "point_in_time" and manifest["feature_service"] == "ranker_v2"
    w = {s: {k: pd.Timestamp(v) for k, v in manifest["windows"][s].items()} for s in ("train", "valid", "test")}
    assert w["train"]["end"] <= w["valid"]["start"] < w["valid"]["end"] <= w["test"]["start"]
    assert w["train"]["end"] < w["test"]["start"]
    assert min(len(data.train), len(data.valid), len(data.test)) > 500
    assert data.train["event_time"].max() < data.valid["event_time"].min()
    assert data.valid["event_time"].max() < data.test["event_time"].min()

    run = _client(world).get_run(result.run_id)
    assert {"click_auc", "click_ece", "two_tower_recall_at_100", "popularity_recall_at_100"} <= set(run.data.metrics)
    assert run.data.metrics["click_auc"] == result.metrics["click_auc"] > 0.55
    assert run.data.tags["dataset_hash"] == manifest["content_hash"]
    assert run.data.tags["feature_service"] == "ranker_v2" and run.data.params["source"] == "point_in_time"
    mlflow.set_tracking_uri(world.mlflow_uri)
    lineage = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/lineage/dataset.json"))
    assert lineage["path"] == result.dataset and lineage["windows"] == manifest["windows"]

    reference = registry.load_reference(world, result.run_id)
    assert reference["n_rows"] == len(data.train)
    assert set(reference["features"]) == set(data.feature_columns) and "p_click" in reference["scores"]


def test_a_run_that_cannot_meet_the_gate_is_refused_and_the_champion_stays(world, first, second):
    champion, _ = first
    result, _ = second
    assert result.version != champion.version
    assert not result.gate_passed and result.aliases == []
    assert result.gate_reasons and all(r.startswith("click_auc is") and "below the floor of 0.99" in r
                                       for r in result.gate_reasons)
    assert registry.champion_version(world) == champion.version
    model = _client(world).get_registered_model(registry.MODEL_NAME)
    assert dict(model.aliases) == {"champion": champion.version}  # no challenger either
    tags = _client(world).get_model_version(registry.MODEL_NAME, result.version).tags
    assert tags[registry.Tag.GATE_RESULT] == "refused" and tags[registry.Tag.GATE_CHAMPION] == champion.version
    assert result.dataset == champion.dataset  # same lake, same rows: the same dataset version


_CHILD = """
import sys
import numpy as np, pandas as pd
from eightbox.settings import Settings
from eightbox.training.registry import load_by_alias

model = load_by_alias(Settings(), "champion")
out = model.predict(pd.read_parquet(sys.argv[1]))
np.savez(sys.argv[2], run_id=model.metadata.run_id, **{c: out[c].to_numpy() for c in out.columns})
"""


def test_the_champion_loaded_in_a_fresh_process_predicts_bit_for_bit_what_training_built(world, first, tmp_path):
    result, bundled = first
    rows = load_dataset(result.dataset).test
    expected = bundled["ranker"].predict(rows)  # what the run's own ranker, in memory, says
    rows.to_parquet(tmp_path / "test.parquet")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "test.parquet"), str(tmp_path / "out.npz")],
                          cwd=REPO_ROOT, env=world.child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert str(got["run_id"]) == result.run_id
    assert set(got.files) - {"run_id"} == set(expected.columns) >= {"p_click", "p_engaged", "value"}
    for column in expected.columns:
        want = expected[column].to_numpy()
        assert got[column].dtype == want.dtype and got[column].tobytes() == want.tobytes(), column


def test_the_bundles_index_belongs_to_its_two_tower_and_refuses_another_encoder(world, first, second, tmp_path):
    result, _ = first
    _, other = second
    bundle = registry.load_by_alias(world, "champion", dst_path=tmp_path).unwrap_python_model().bundle
    tower, index = bundle.component("two_tower"), bundle.component("index")
    version = bundle.metadata["encoder_version"]
    assert tower.encoder_version == index.encoder_version == version == bundle.component("user_tower").encoder_version
    assert _client(world).get_model_version(registry.MODEL_NAME, result.version).tags["encoder_version"] == version

    # The index holds this tower's item vectors: every item's own embedding finds itself first.
    items = items_from_events(read_events(world.lake_dir, "item_published").to_pandas())
    ids, vectors = tower.item_embeddings(items)
    assert sorted(ids) == sorted(index.ids.tolist())
    found, scores = index.search(vectors, 1)
    assert [f[0] for f in found] == ids and np.allclose(scores[:, 0], 1.0, atol=1e-4)

    # Another run's encoder: refused at load and at search.
    stranger = other["two_tower"]
    assert stranger.encoder_version != version
    index_dir = bundle.root / bundle.components["index"].path
    assert AnnIndex.load(index_dir, expected_encoder_version=version).encoder_version == version
    with pytest.raises(EncoderVersionMismatch):
        AnnIndex.load(index_dir, expected_encoder_version=stranger.encoder_version)
    with pytest.raises(EncoderVersionMismatch):
        index.search(stranger.item_embeddings(items)[1], 1)
