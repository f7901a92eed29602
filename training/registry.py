"""The model registry on MLflow: log a training run with its lineage, register its bundle as a pyfunc
model, and move it up the ladder candidate → challenger → champion through the promotion gate.

Every function talks to the MLflow server at ``settings.mlflow_uri``; artifacts go through the
server (``mlflow-artifacts:/``), so any process that reaches the server can load a model back.

Ladder state lives on the registered model: aliases ``challenger`` and ``champion`` say where a
version stands now (``holdback``: the champion before the current one, which a share of users keeps
seeing, see `serving.experiments`), and model-version tags record how it got there (names in `Tag`):
``rung.gate_passed`` / ``rung.challenger`` / ``rung.champion`` / ``rung.rolled_back`` hold the
UTC time of each rung, ``gate.*`` the last gate verdict, ``previous_champion`` the version that
held ``champion`` before this one, which `rollback` restores.

What serving does with those aliases is registered-model state too: tags ``eightbox.experiment.*``
(`serving_experiment`, `set_serving_experiment`) hold the challenger's A/B share, the interleaved
and holdback shares, shadow scoring on or off, and the assignment salt. The promotion ladder writes
them; every serving process polls them (with the aliases, in one call: `serving_registry_state`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from eightbox.settings import REPO_ROOT, Settings

from .bundle import load_bundle
from .gate import GateResult, GateThresholds, gate

__all__ = ["MODEL_NAME", "CHAMPION", "CHALLENGER", "HOLDBACK", "RegistryError", "Tag", "GateThresholds",
           "GateResult", "gate", "log_training_run", "version_of_run", "load_reference", "propose",
           "promote", "rollback", "champion_version", "alias_version", "load_by_alias", "load_version",
           "code_version", "serving_experiment", "set_serving_experiment", "serving_registry_state"]

MODEL_NAME = "eightbox-recommender"
CHAMPION, CHALLENGER, HOLDBACK = "champion", "challenger", "holdback"
EXPERIMENT_TAG_PREFIX = "eightbox.experiment."
# The serving experiment when no tag says otherwise: everyone on the champion.
EXPERIMENT_DEFAULTS: dict[str, Any] = {"challenger_share": 0.0, "shadow": False, "interleave_share": 0.0,
                                       "holdback_share": 0.0, "salt": "1"}
REFERENCE_ARTIFACT = "reference/reference.json"
# What the pyfunc environment needs besides eightbox itself, which the serving image installs.
_PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]


class RegistryError(RuntimeError):
    """A registry action refused or impossible as asked; the message says why."""


class Tag:
    """Model-version tag keys."""
    GATE_RESULT, GATE_REASONS, GATE_CHAMPION, GATE_THRESHOLDS = (
        "gate.result", "gate.reasons", "gate.champion_version", "gate.thresholds")
    GATE_PASSED, AT_CHALLENGER, AT_CHAMPION, ROLLED_BACK = (
        "rung.gate_passed", "rung.challenger", "rung.champion", "rung.rolled_back")
    PREVIOUS_CHAMPION, FORCED = "previous_champion", "champion.forced"
    GATE_BASIS = "gate.champion_basis"


class BundleModel(PythonModel):
    """The pyfunc face of a bundle: ``predict(df)`` is `Bundle.predict(df)`. Holds no state of its
    own (it pickles to a class reference); the bundle travels as the model artifact ``bundle``."""

    def load_context(self, context) -> None:
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.bundle.predict(model_input)


@contextmanager
def _mlflow(settings: Settings) -> Iterator[MlflowClient]:
    """Point MLflow at `settings.mlflow_uri` (the fluent API's URI stays set afterwards) and keep it
    quiet for the duration: no run URLs on stdout, no progress bars, warnings and logs below ERROR."""
    quiet = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved_env = {k: os.environ.get(k) for k in quiet}
    logger = logging.getLogger("mlflow")
    saved_level = logger.level
    os.environ.update(quiet)
    logger.setLevel(logging.ERROR)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    finally:
        logger.setLevel(saved_level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(obj: Any) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (np.ndarray, pd.Series)):
            return o.tolist()
        if isinstance(o, (Path, datetime, pd.Timestamp)):
            return str(o)
        raise TypeError(f"not JSON-serializable: {type(o).__name__}")
    return json.dumps(obj, default=default, indent=1, sort_keys=True, allow_nan=True)


def code_version() -> str:
    """The git commit of this checkout, or ``"unknown"`` outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def log_training_run(settings: Settings, *, experiment: str, params: Mapping[str, Any],
                     metrics: Mapping[str, float], dataset: Mapping[str, Any], feature_service: str,
                     code_version: str, reference: pd.DataFrame | Mapping[str, Any], bundle_dir: str | Path,
                     artifacts: Mapping[str, str | Path] | None = None, model_name: str = MODEL_NAME) -> str:
    """Log one training run and register its bundle; returns the MLflow run id.

    The run gets `params`, `metrics`, tags ``dataset_version``, ``dataset_hash``, ``feature_service``,
    ``code_version``; artifacts ``lineage/dataset.json`` (the whole `dataset` dict: version, hash,
    path, windows), ``reference/reference.json`` (see `load_reference`), each of `artifacts` under
    its key, and the pyfunc model ``model`` that carries `bundle_dir`. The model is registered as a
    new version of `model_name` with lineage tags (run_id, dataset hash and version, encoder
    version, feature service, code version); the run's tag ``registered_version`` names it.
    The new version holds no alias: `propose` is the only way up."""
    bundle = load_bundle(bundle_dir)  # fail before logging anything if the bundle is unreadable
    lineage = {
        "dataset_version": str(dataset.get("version", "unknown")),
        "dataset_hash": str(dataset.get("hash", "unknown")),
        "feature_service": feature_service,
        "code_version": code_version,
    }
    with _mlflow(settings) as client:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.set_tags({**lineage, "reference_format": "dataframe-split" if isinstance(reference, pd.DataFrame) else "json"})
            mlflow.log_text(_json(dict(dataset)), "lineage/dataset.json")
            # A DataFrame goes as {"index", "columns", "data"}; json keeps every float's exact bits.
            ref = reference.to_dict(orient="split") if isinstance(reference, pd.DataFrame) else dict(reference)
            mlflow.log_text(_json(ref), REFERENCE_ARTIFACT)
            for name, path in (artifacts or {}).items():
                path = Path(path)
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=name)
                else:
                    mlflow.log_artifact(str(path), artifact_path=name)
            info = mlflow.pyfunc.log_model(name="model", python_model=BundleModel(),
                                           artifacts={"bundle": str(bundle.root)},
                                           pip_requirements=_PIP_REQUIREMENTS)
            _ensure_registered_model(client, model_name)
            version = client.create_model_version(
                model_name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags={
                    **lineage, "run_id": run.info.run_id, "bundle_name": bundle.name,
                    "encoder_version": str(bundle.metadata.get("encoder_version", "unknown"))})
            mlflow.set_tag("registered_version", version.version)
        return run.info.run_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    # Through the client, not mlflow.register_model: that one prints to stderr on every call.
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def version_of_run(settings: Settings, run_id: str) -> str:
    """The registered model version `log_training_run` created for `run_id`."""
    with _mlflow(settings) as client:
        version = client.get_run(run_id).data.tags.get("registered_version")
    if version is None:
        raise RegistryError(f"run {run_id} registered no model version")
    return version


def load_reference(settings: Settings, run_id: str) -> pd.DataFrame | dict:
    """The training-distribution reference logged with `run_id`, as it was given (DataFrame or dict)."""
    with _mlflow(settings) as client:
        kind = client.get_run(run_id).data.tags.get("reference_format", "json")
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{REFERENCE_ARTIFACT}")
    if kind == "dataframe-split":
        return pd.DataFrame(**json.loads(text))
    return json.loads(text)


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_version(settings: Settings, model_name: str = MODEL_NAME) -> str | None:
    """The version the ``champion`` alias points at, or None if no version holds it."""
    return alias_version(settings, CHAMPION, model_name)


def alias_version(settings: Settings, alias: str, model_name: str = MODEL_NAME) -> str | None:
    """The version `alias` points at, or None if no version holds it."""
    with _mlflow(settings) as client:
        mv = _alias_version(client, model_name, alias)
    return mv.version if mv else None


def propose(settings: Settings, version: str | int, thresholds: GateThresholds,
            model_name: str = MODEL_NAME, champion_metrics: Mapping[str, float] | None = None,
            basis: str = "champion on this test window") -> GateResult:
    """Gate `version` (its run's metrics) against the current champion's; with no champion, floors and
    ceilings alone decide. On a pass, alias ``challenger`` moves to `version`; on a refusal no alias
    moves. Either way the verdict, reasons, compared champion and thresholds become version tags.
    `champion_metrics`: the champion measured on the candidate's own test window (the fair exam);
    None compares with the metrics logged by the champion's own run (tag ``gate.champion_basis``, which
    says `basis` otherwise)."""
    version = str(version)
    with _mlflow(settings) as client:
        candidate = client.get_run(client.get_model_version(model_name, version).run_id).data.metrics
        champ = _alias_version(client, model_name, CHAMPION)
        if champ is not None and champion_metrics is not None:
            champ_metrics = dict(champion_metrics)
            client.set_model_version_tag(model_name, version, Tag.GATE_BASIS, basis)
        else:
            champ_metrics = client.get_run(champ.run_id).data.metrics if champ else None
            if champ is not None:
                client.set_model_version_tag(model_name, version, Tag.GATE_BASIS, "champion's own run")
        result = gate(candidate, champ_metrics, thresholds)
        at = _now()
        tags = {Tag.GATE_RESULT: "passed" if result.passed else "refused",
                Tag.GATE_REASONS: json.dumps(result.reasons),
                Tag.GATE_CHAMPION: champ.version if champ else "none",
                Tag.GATE_THRESHOLDS: json.dumps(thresholds.to_dict(), sort_keys=True)}
        if result.passed:
            tags |= {Tag.GATE_PASSED: at, Tag.AT_CHALLENGER: at}
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        if result.passed:
            client.set_registered_model_alias(model_name, CHALLENGER, version)
    return result


def promote(settings: Settings, version: str | int, *, force: bool = False,
            model_name: str = MODEL_NAME) -> str | None:
    """Move ``champion`` to `version` and return the version that held it before (None: first one).

    Only a version that holds ``challenger`` or whose last gate verdict passed may be promoted, unless
    `force` (recorded as tag ``champion.forced``). The promoted version loses ``challenger``, and
    remembers the previous champion in tag ``previous_champion`` for `rollback`; the previous
    champion takes alias ``holdback`` (serving keeps `holdback_share` of users on it)."""
    version = str(version)
    with _mlflow(settings) as client:
        mv = client.get_model_version(model_name, version)
        challenger = _alias_version(client, model_name, CHALLENGER)
        eligible = (challenger is not None and challenger.version == version) \
            or mv.tags.get(Tag.GATE_RESULT) == "passed"
        if not eligible and not force:
            verdict = mv.tags.get(Tag.GATE_RESULT, "never gated")
            raise RegistryError(f"{model_name} v{version} is not the challenger and its gate verdict is "
                                f"'{verdict}': run propose() first, or promote(force=True)")
        champ = _alias_version(client, model_name, CHAMPION)
        previous = champ.version if champ and champ.version != version else None
        if previous is not None:
            client.set_model_version_tag(model_name, version, Tag.PREVIOUS_CHAMPION, previous)
        client.set_model_version_tag(model_name, version, Tag.AT_CHAMPION, _now())
        if force and not eligible:
            client.set_model_version_tag(model_name, version, Tag.FORCED, "true")
        client.set_registered_model_alias(model_name, CHAMPION, version)
        if previous is not None:
            client.set_registered_model_alias(model_name, HOLDBACK, previous)
        if challenger is not None and challenger.version == version:
            client.delete_registered_model_alias(model_name, CHALLENGER)
    return previous


def rollback(settings: Settings, model_name: str = MODEL_NAME) -> str:
    """Give ``champion`` back to the version it replaced; returns that version. The demoted version
    gets tag ``rung.rolled_back``. Rolling back again steps further back through the promotions.
    A ``holdback`` on the restored version is removed: it would hold users back on the champion."""
    with _mlflow(settings) as client:
        champ = _alias_version(client, model_name, CHAMPION)
        if champ is None:
            raise RegistryError(f"{model_name} has no champion to roll back")
        previous = champ.tags.get(Tag.PREVIOUS_CHAMPION)
        if not previous:
            raise RegistryError(f"{model_name} v{champ.version} replaced no earlier champion: nothing to roll back to")
        at = _now()
        client.set_model_version_tag(model_name, champ.version, Tag.ROLLED_BACK, at)
        client.set_model_version_tag(model_name, previous, Tag.AT_CHAMPION, at)
        client.set_registered_model_alias(model_name, CHAMPION, previous)
        holdback = _alias_version(client, model_name, HOLDBACK)
        if holdback is not None and holdback.version == previous:
            client.delete_registered_model_alias(model_name, HOLDBACK)
    return previous


def load_version(settings: Settings, version: str | int, *, dst_path: str | Path | None = None,
                 model_name: str = MODEL_NAME):
    """The pyfunc model of registry `version`, like `load_by_alias` but immune to an alias that
    moves while it downloads (serving reads the aliases first, then loads the versions they named)."""
    with _mlflow(settings):
        return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}",
                                        dst_path=str(dst_path) if dst_path is not None else None)


def experiment_from_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    """The serving experiment that registered-model `tags` describe (defaults where a tag is absent),
    validated; raises RegistryError on a tag that is not a valid value."""
    out = dict(EXPERIMENT_DEFAULTS)
    for tag, value in tags.items():
        key = tag[len(EXPERIMENT_TAG_PREFIX):]
        if not tag.startswith(EXPERIMENT_TAG_PREFIX) or key not in out:
            continue  # not ours, or a setting a newer writer knows: ignored, not fatal
        if isinstance(EXPERIMENT_DEFAULTS[key], bool):
            if value not in ("true", "false"):
                raise RegistryError(f"experiment tag {tag}={value!r} is not true or false")
            out[key] = value == "true"
        elif isinstance(EXPERIMENT_DEFAULTS[key], float):
            try:
                out[key] = float(value)
            except ValueError:
                raise RegistryError(f"experiment tag {tag}={value!r} is not a number") from None
        else:
            out[key] = value
    return _valid_experiment(out)


def _valid_experiment(exp: dict[str, Any]) -> dict[str, Any]:
    for key in ("challenger_share", "interleave_share", "holdback_share"):
        share = exp[key]
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share <= 1.0:
            raise RegistryError(f"{key} must be a number in [0, 1], got {share!r}")
        exp[key] = float(share)
    if exp["challenger_share"] + exp["holdback_share"] > 1.0 + 1e-9:
        raise RegistryError(f"challenger_share + holdback_share must be <= 1, got "
                            f"{exp['challenger_share']} + {exp['holdback_share']}")
    if not isinstance(exp["shadow"], bool):
        raise RegistryError(f"shadow must be true or false, got {exp['shadow']!r}")
    salt = exp["salt"]
    if not isinstance(salt, str) or not salt or "\0" in salt or len(salt) > 64:
        raise RegistryError(f"salt must be 1-64 characters without NUL, got {salt!r}")
    return exp


def serving_experiment(settings: Settings, model_name: str = MODEL_NAME) -> dict[str, Any]:
    """The serving experiment of `model_name`: {"challenger_share", "shadow", "interleave_share",
    "holdback_share", "salt"}, defaults (everyone on the champion) for a model without the tags."""
    with _mlflow(settings) as client:
        try:
            tags = client.get_registered_model(model_name).tags
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            tags = {}
    return experiment_from_tags(tags)


def set_serving_experiment(settings: Settings, model_name: str = MODEL_NAME, *,
                           challenger_share: float | None = None, shadow: bool | None = None,
                           interleave_share: float | None = None, holdback_share: float | None = None,
                           salt: str | None = None) -> dict[str, Any]:
    """Change the serving experiment of `model_name` (arguments left None keep their value) and return
    it whole. Shares are in [0, 1] and challenger + holdback <= 1 (RegistryError otherwise, and no
    tag is written). Serving processes pick it up at their next registry poll."""
    given = {"challenger_share": challenger_share, "shadow": shadow, "interleave_share": interleave_share,
             "holdback_share": holdback_share, "salt": salt}
    try:
        current = serving_experiment(settings, model_name)
    except RegistryError:  # tags broken by hand: this write replaces them all
        current = dict(EXPERIMENT_DEFAULTS)
    exp = _valid_experiment({**current, **{k: v for k, v in given.items() if v is not None}})
    with _mlflow(settings) as client:
        _ensure_registered_model(client, model_name)
        for key, value in exp.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            client.set_registered_model_tag(model_name, EXPERIMENT_TAG_PREFIX + key, text)
    return exp


def serving_registry_state(settings: Settings, model_name: str = MODEL_NAME) -> dict[str, Any]:
    """What a serving process follows, read in one registry call: {"champion", "challenger",
    "holdback"} (the version each alias names, or None), "experiment" (`serving_experiment`) and
    "experiment_error" (None; or why the tags were refused, and then "experiment" is the default:
    everyone on the champion). No registered model: no aliases, the default experiment."""
    with _mlflow(settings) as client:
        try:
            model = client.get_registered_model(model_name)
            aliases, tags = dict(model.aliases or {}), dict(model.tags or {})
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            aliases, tags = {}, {}
    try:
        experiment, error = experiment_from_tags(tags), None
    except RegistryError as e:  # a bad tag must not stop the champion from being followed
        experiment, error = dict(EXPERIMENT_DEFAULTS), str(e)
    versions = {alias: str(aliases[alias]) if alias in aliases else None for alias in (CHAMPION, CHALLENGER, HOLDBACK)}
    return {**versions, "experiment": experiment, "experiment_error": error}


def load_by_alias(settings: Settings, alias: str = CHAMPION, *, dst_path: str | Path | None = None,
                  model_name: str = MODEL_NAME):
    """The pyfunc model that `alias` points at, downloaded (into `dst_path`, default a new temporary
    folder) and loaded; ``.unwrap_python_model().bundle`` is its `Bundle`."""
    with _mlflow(settings):
        return mlflow.pyfunc.load_model(f"models:/{model_name}@{alias}",
                                        dst_path=str(dst_path) if dst_path is not None else None)
