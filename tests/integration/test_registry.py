"""The model registry on the real MLflow server: lineage on every run, the promotion gate, aliases
that move and roll back, and a champion that a fresh process loads and that predicts bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from eightbox.settings import REPO_ROOT
from eightbox.training import registry
from eightbox.training.bundle import save_component, write_bundle
from eightbox.training.registry import GateThresholds, RegistryError, Tag

from ..unit.tiny_ranker import FEATURES, TinyRanker, toy_data

THRESHOLDS = GateThresholds(max_drop={"auc": 0.02}, max_rise={"logloss": 0.05}, floors={"auc": 0.6})
HOLDOUT = toy_data(300, seed=99)


@pytest.fixture
def settings(stack, stack_settings):
    return stack_settings


def train_and_log(settings, tmp_path, model_name: str, *, rows: int = 400, flip: bool = False, seed: int = 0):
    """Fit the tiny ranker (labels flipped: a deliberately bad one), bundle it, log and register it.
    Returns (run_id, version, ranker)."""
    train = toy_data(rows, seed=seed)
    if flip:
        train = train.assign(y=1 - train["y"])
    ranker = TinyRanker.fit(train)
    scores = ranker.predict(HOLDOUT)["score"]
    metrics = {"auc": roc_auc_score(HOLDOUT["y"], scores), "logloss": log_loss(HOLDOUT["y"], scores)}
    bundle_dir = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}"
    write_bundle(bundle_dir, name=model_name, components={"ranker": save_component(bundle_dir, "ranker", ranker)},
                 metadata={"encoder_version": "enc-7", "feature_service": "ranker_v1", "dataset_hash": f"h{seed}"})
    quantiles = train[FEATURES].assign(score=ranker.predict(train)["score"]).quantile([0.01, 0.5, 0.99])
    report = tmp_path / "eval.json"
    report.write_text(json.dumps(metrics))
    run_id = registry.log_training_run(
        settings, experiment="registry-tests", params={"C": 1.0, "rows": rows}, metrics=metrics,
        dataset={"version": f"toy-{seed}", "hash": f"h{seed}", "path": "/lake/toy", "windows": ["2024-01-01"]},
        feature_service="ranker_v1", code_version="abc123",
        reference=quantiles.rename_axis("quantile").reset_index(), bundle_dir=bundle_dir,
        artifacts={"evaluation": report}, model_name=model_name)
    return run_id, registry.version_of_run(settings, run_id), ranker


def aliases(settings, model_name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(settings.mlflow_uri, settings.mlflow_uri).get_registered_model(model_name).aliases)


def version_tags(settings, model_name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri).get_model_version(model_name, version).tags


def test_the_gate_refuses_a_worse_candidate_and_aliases_move_up_and_roll_back(settings, tmp_path):
    name = f"ladder-{uuid.uuid4().hex[:8]}"
    _, first, _ = train_and_log(settings, tmp_path, name, rows=200, seed=1)
    assert registry.champion_version(settings, name) is None and aliases(settings, name) == {}

    # No champion yet: floors alone decide, and the first model climbs to challenger, then champion.
    assert registry.propose(settings, first, THRESHOLDS, model_name=name).passed
    assert aliases(settings, name) == {"challenger": first}
    assert registry.promote(settings, first, model_name=name) is None
    assert aliases(settings, name) == {"champion": first}

    # A worse candidate is refused with reasons, recorded on it; no alias moves, nor can it be promoted.
    _, worse, _ = train_and_log(settings, tmp_path, name, flip=True, seed=2)
    result = registry.propose(settings, worse, THRESHOLDS, model_name=name)
    assert not result.passed
    assert [r.split()[0] for r in result.reasons] == ["auc", "auc", "logloss"]
    assert any(r.startswith("auc fell") and "at most 2.00%" in r for r in result.reasons)
    tags = version_tags(settings, name, worse)
    assert tags[Tag.GATE_RESULT] == "refused" and json.loads(tags[Tag.GATE_REASONS]) == result.reasons
    assert tags[Tag.GATE_CHAMPION] == first and Tag.GATE_PASSED not in tags
    assert aliases(settings, name) == {"champion": first}
    with pytest.raises(RegistryError, match="not the challenger"):
        registry.promote(settings, worse, model_name=name)

    # A better one passes, becomes challenger, then champion; the old champion is remembered, and held
    # back: alias holdback keeps it servable to the users the experiment holds back.
    _, better, _ = train_and_log(settings, tmp_path, name, rows=2000, seed=3)
    assert registry.propose(settings, better, THRESHOLDS, model_name=name).reasons == []
    assert aliases(settings, name) == {"champion": first, "challenger": better}
    assert registry.promote(settings, better, model_name=name) == first
    assert aliases(settings, name) == {"champion": better, "holdback": first}
    tags = version_tags(settings, name, better)
    assert tags[Tag.PREVIOUS_CHAMPION] == first
    assert all(tags[t].endswith("+00:00") for t in (Tag.GATE_PASSED, Tag.AT_CHALLENGER, Tag.AT_CHAMPION))

    # Rollback restores the previous champion and marks the demoted one; there is nothing before that.
    # The holdback on the restored champion is gone (it would hold users back on the champion itself).
    assert registry.rollback(settings, model_name=name) == first
    assert aliases(settings, name) == {"champion": first}
    assert Tag.ROLLED_BACK in version_tags(settings, name, better)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(settings, model_name=name)

    # force promotes past the gate, and says so on the version.
    registry.promote(settings, worse, force=True, model_name=name)
    assert registry.champion_version(settings, name) == worse
    assert version_tags(settings, name, worse)[Tag.FORCED] == "true"


@pytest.fixture(scope="module")
def champion(stack, stack_settings, tmp_path_factory):
    """One logged run, gated and promoted to champion under a model name of its own."""
    name = f"fresh-{uuid.uuid4().hex[:8]}"
    run_id, version, ranker = train_and_log(stack_settings, tmp_path_factory.mktemp("champion"), name, seed=4)
    assert registry.propose(stack_settings, version, THRESHOLDS, model_name=name).passed
    registry.promote(stack_settings, version, model_name=name)
    return name, run_id, version, ranker


_CHILD = """
import sys
import numpy as np, pandas as pd
from eightbox.settings import Settings
from eightbox.training.registry import load_by_alias

model = load_by_alias(Settings(), "champion", model_name=sys.argv[1])
np.save(sys.argv[3], model.predict(pd.read_parquet(sys.argv[2]))["score"].to_numpy())
"""


def test_the_champion_loaded_by_alias_in_a_fresh_process_predicts_bit_for_bit(stack_settings, champion, tmp_path):
    name, _, _, ranker = champion
    expected = ranker.predict(HOLDOUT)["score"].to_numpy()  # the training run's own predictions
    HOLDOUT.to_parquet(tmp_path / "holdout.parquet")
    done = subprocess.run([sys.executable, "-c", _CHILD, name, str(tmp_path / "holdout.parquet"),
                           str(tmp_path / "scores.npy")], cwd=REPO_ROOT, env=stack_settings.child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # MLflow stays quiet
    got = np.load(tmp_path / "scores.npy")
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert got.tobytes() == expected.tobytes()


def test_a_training_run_records_its_lineage_on_the_run_and_the_model_version(stack_settings, champion):
    from mlflow import MlflowClient

    name, run_id, version, _ = champion
    client = MlflowClient(stack_settings.mlflow_uri, stack_settings.mlflow_uri)
    run = client.get_run(run_id)
    assert {k: run.data.tags[k] for k in ("dataset_version", "dataset_hash", "feature_service", "code_version")} \
        == {"dataset_version": "toy-4", "dataset_hash": "h4", "feature_service": "ranker_v1", "code_version": "abc123"}
    assert run.data.params == {"C": "1.0", "rows": "400"} and set(run.data.metrics) == {"auc", "logloss"}
    assert {"evaluation", "lineage", "reference"} <= {a.path for a in client.list_artifacts(run_id)}

    tags = version_tags(stack_settings, name, version)
    assert {k: tags[k] for k in ("run_id", "dataset_hash", "encoder_version", "feature_service")} \
        == {"run_id": run_id, "dataset_hash": "h4", "encoder_version": "enc-7", "feature_service": "ranker_v1"}

    reference = registry.load_reference(stack_settings, run_id)
    assert list(reference.columns) == ["quantile", *FEATURES, "score"]
    assert reference["quantile"].tolist() == [0.01, 0.5, 0.99]


def test_the_bundle_travels_with_the_model(stack_settings, champion, tmp_path):
    name, _, _, ranker = champion
    bundle = registry.load_by_alias(stack_settings, "champion", dst_path=tmp_path, model_name=name) \
        .unwrap_python_model().bundle
    assert bundle.root.is_relative_to(tmp_path) and bundle.metadata["encoder_version"] == "enc-7"
    assert bundle.component("ranker").coef.tolist() == ranker.coef.tolist()


def test_the_serving_experiment_is_validated_stored_as_tags_and_read_back_with_the_aliases(stack_settings, champion):
    name, _, version, _ = champion
    assert registry.serving_experiment(stack_settings, name) == registry.EXPERIMENT_DEFAULTS
    exp = registry.set_serving_experiment(stack_settings, name, challenger_share=0.3, shadow=True, salt="s2")
    assert exp == {**registry.EXPERIMENT_DEFAULTS, "challenger_share": 0.3, "shadow": True, "salt": "s2"}
    # Arguments left out keep their value; a refused change writes nothing.
    assert registry.set_serving_experiment(stack_settings, name, holdback_share=0.1)["challenger_share"] == 0.3
    with pytest.raises(RegistryError, match="challenger_share \\+ holdback_share"):
        registry.set_serving_experiment(stack_settings, name, challenger_share=0.95)
    state = registry.serving_registry_state(stack_settings, name)
    assert state == {"champion": version, "challenger": None, "holdback": None, "experiment_error": None,
                     "experiment": {**exp, "holdback_share": 0.1}}
    # A tag written by hand that breaks the rules is reported, and serving gets the safe default.
    from mlflow import MlflowClient

    MlflowClient(stack_settings.mlflow_uri, stack_settings.mlflow_uri).set_registered_model_tag(
        name, "eightbox.experiment.challenger_share", "2")
    state = registry.serving_registry_state(stack_settings, name)
    assert state["experiment"] == registry.EXPERIMENT_DEFAULTS and "challenger_share" in state["experiment_error"]
    registry.set_serving_experiment(stack_settings, name, challenger_share=0.0, holdback_share=0.0, shadow=False)
    assert registry.serving_registry_state(stack_settings, "no-such-model") == {
        "champion": None, "challenger": None, "holdback": None, "experiment": registry.EXPERIMENT_DEFAULTS,
        "experiment_error": None}
