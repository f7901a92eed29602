"""The multi-task ranker: XGBoost heads for click, engagement and value, calibrated, with the
logged position as a training feature that is fixed at serving.

Heads (each one XGBoost booster, `hist` trees, early-stopped on the validation window):

* ``click``   — binary:logistic, P(click | impression).
* ``engaged`` — binary:logistic, P(engagement | impression) (0 for impressions never clicked).
* ``value``   — reg:tweedie (default) or reg:squarederror on the engagement value per impression
  (0 when there was none): E[value | impression]. Trained only when the value column exists.

Position bias: the position an item was shown at is a feature in training, so the trees explain
away "clicked because it was on top"; at serving every candidate is scored at the same position
(``serve_position``, 0 by default), so the score compares items, not slots. Calibrators are fit on
validation predictions at the *logged* positions (those are what the labels answer), and the same
monotone map is applied to the served predictions.

Binary heads are calibrated on the validation window with isotonic or Platt, chosen by
out-of-fold log loss (``calibration="auto"``) and recorded; the value head gets a scalar
correction so its validation mean matches the observed mean. Missing feature values (NaN) are
allowed: XGBoost learns a default direction for them.

Saved as one XGBoost JSON model per head plus ``manifest.json`` (features, params, calibrators,
heads and a content hash ``version``); loading needs no pickles and gives identical predictions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import xgboost as xgb

from .calibration import EPS, Calibrator, choose_calibrator, expected_calibration_error, log_loss

LABELS: dict[str, str] = {"click": "click", "engaged": "engaged", "value": "value"}  # head -> label column
OUTPUTS: dict[str, str] = {"click": "p_click", "engaged": "p_engaged", "value": "value"}  # head -> predict column
BINARY_HEADS = ("click", "engaged")
DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist", "max_depth": 6, "eta": 0.1, "min_child_weight": 5.0,
    "subsample": 0.8, "colsample_bytree": 0.8, "lambda": 1.0, "max_bin": 256,
}
FORMAT = 1


class MultiTaskRanker:
    """Fit with `fit`, score candidates with `predict`, evaluate with `metrics`, persist with
    `save` / `load`. Same data, params and seed => identical models and `version` (nthread does
    not change `hist` results, so it is not part of the version)."""

    def __init__(self, params: Mapping[str, Any] | None = None, num_boost_round: int = 400,
                 early_stopping_rounds: int = 30, seed: int = 0, nthread: int = 2,
                 calibration: str = "auto", value_objective: str = "reg:tweedie",
                 serve_position: int = 0, labels: Mapping[str, str] | None = None):
        if calibration not in ("auto", "isotonic", "platt"):
            raise ValueError("calibration must be 'auto', 'isotonic' or 'platt'")
        if value_objective not in ("reg:tweedie", "reg:squarederror"):
            raise ValueError("value_objective must be 'reg:tweedie' or 'reg:squarederror'")
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.num_boost_round, self.early_stopping_rounds = num_boost_round, early_stopping_rounds
        self.seed, self.nthread, self.calibration = seed, nthread, calibration
        self.value_objective, self.serve_position = value_objective, serve_position
        self.labels = {**LABELS, **(labels or {})}
        self.features: list[str] = []
        self.position = "position"
        self.monotone: dict[str, int] = {}
        self.boosters: dict[str, xgb.Booster] = {}
        self.calibrators: dict[str, Calibrator] = {}
        self.calibration_scores: dict[str, dict[str, float]] = {}
        self.value_scale = 1.0
        self.version: str | None = None

    @property
    def heads(self) -> list[str]:
        return list(self.boosters)

    @property
    def columns(self) -> list[str]:
        """Model input columns, in order: the features, then the position."""
        return [*self.features, self.position]

    # --- training ------------------------------------------------------------------------------
    def fit(self, train_df: pd.DataFrame, valid_df: pd.DataFrame, features: list[str],
            position: str = "position", monotone: Mapping[str, int] | None = None) -> MultiTaskRanker:
        """Train every head whose label column is in `train_df` (click is required), early-stop
        and calibrate on `valid_df` (a later time window). `monotone` maps a column (a feature or
        the position) to +1 / -1: every head is then non-decreasing / non-increasing in it."""
        if self.labels["click"] not in train_df:
            raise KeyError(f"train_df has no click label column {self.labels['click']!r}")
        if position in features:
            raise ValueError("the position column must not also be listed in features")
        unknown = set(monotone or {}) - {*features, position}
        if unknown:
            raise ValueError(f"monotone names unknown columns: {sorted(unknown)}")
        self.features, self.position, self.monotone = list(features), position, dict(monotone or {})
        x_train, x_valid = self._matrix(train_df, None), self._matrix(valid_df, None)
        # Engaged / value heads only when the data has them (a column with some positive label).
        heads = ["click"] + [h for h in ("engaged", "value")
                             if self.labels[h] in train_df and (train_df[self.labels[h]] > 0).any()]
        self.boosters, self.calibrators, self.calibration_scores, self.value_scale = {}, {}, {}, 1.0
        for head in heads:
            y_train = train_df[self.labels[head]].to_numpy(dtype=float)
            y_valid = valid_df[self.labels[head]].to_numpy(dtype=float)
            self.boosters[head] = self._train(head, x_train, y_train, x_valid, y_valid)
            raw = self._raw(head, x_valid)
            if head in BINARY_HEADS:
                if self.calibration == "auto":
                    cal, scores = choose_calibrator(raw, y_valid, seed=self.seed)
                else:
                    cal, scores = Calibrator(self.calibration).fit(raw, y_valid), {}
                self.calibrators[head], self.calibration_scores[head] = cal, scores
            else:
                # Scalar correction: the validation mean of predictions equals the observed mean.
                self.value_scale = float(y_valid.mean() / raw.mean()) if raw.mean() > 0 else 1.0
        self.version = _content_hash(self._manifest(), self._model_bytes())
        return self

    def _xgb_params(self, head: str) -> dict[str, Any]:
        p = {**self.params, "seed": self.seed, "nthread": self.nthread}
        if head in BINARY_HEADS:
            p.update(objective="binary:logistic", eval_metric="logloss")
        elif self.value_objective == "reg:tweedie":
            p.update(objective="reg:tweedie", tweedie_variance_power=1.5, eval_metric="tweedie-nloglik@1.5")
        else:
            p.update(objective="reg:squarederror", eval_metric="rmse")
        if self.monotone:
            p["monotone_constraints"] = "(" + ",".join(str(int(self.monotone.get(c, 0))) for c in self.columns) + ")"
        return p

    def _train(self, head: str, x_train: np.ndarray, y_train: np.ndarray,
               x_valid: np.ndarray, y_valid: np.ndarray) -> xgb.Booster:
        names = self.columns
        dtrain = xgb.DMatrix(x_train, label=y_train, feature_names=names, nthread=self.nthread)
        dvalid = xgb.DMatrix(x_valid, label=y_valid, feature_names=names, nthread=self.nthread)
        booster = xgb.train(self._xgb_params(head), dtrain, num_boost_round=self.num_boost_round,
                            evals=[(dvalid, "valid")], early_stopping_rounds=self.early_stopping_rounds,
                            verbose_eval=False)
        return booster[: booster.best_iteration + 1]  # keep only the trees up to the best round

    # --- scoring -------------------------------------------------------------------------------
    def _matrix(self, df: pd.DataFrame, position: int | None) -> np.ndarray:
        """(rows, features + 1) float32; NaN marks a missing value. position=None: as logged."""
        missing = [f for f in self.features if f not in df]
        if missing:
            raise KeyError(f"missing feature columns {missing} (values may be NaN, columns must exist)")
        x = np.empty((len(df), len(self.features) + 1), dtype=np.float32)  # (rows, features + position)
        if self.features:
            x[:, :-1] = df[self.features].to_numpy(dtype=np.float32, na_value=np.nan)
        x[:, -1] = df[self.position].to_numpy(dtype=np.float32) if position is None else position
        return x

    def _raw(self, head: str, x: np.ndarray) -> np.ndarray:
        return self.boosters[head].inplace_predict(x).astype(float)

    def predict(self, df: pd.DataFrame, position: int | str | None = None, calibrated: bool = True) -> pd.DataFrame:
        """One row per row of `df`, same index; columns p_click, p_engaged, value (those the model
        has). position=None scores every row at `serve_position` (serving); an int scores at that
        position; "logged" uses df's own position column (offline evaluation against labels).
        `df` needs every feature column (values may be NaN); the position column only for "logged"."""
        if not self.boosters:
            raise RuntimeError("MultiTaskRanker is not fitted")
        pos = self.serve_position if position is None else (None if position == "logged" else int(position))
        x = self._matrix(df, pos)
        out = {}
        for head in self.heads:
            raw = self._raw(head, x)
            if calibrated:
                raw = self.calibrators[head].transform(raw) if head in BINARY_HEADS else raw * self.value_scale
            out[OUTPUTS[head]] = raw
        return pd.DataFrame(out, index=df.index)

    def metrics(self, df: pd.DataFrame, labels: Mapping[str, Any] | None = None) -> dict[str, dict[str, float]]:
        """Per head, before (`*_raw`) and after calibration, at the logged positions: AUC, log loss
        and ECE (15 uniform bins) for binary heads; RMSE and means for the value head. `labels`
        maps head -> label column name or array; default: the label columns used in `fit`."""
        labels = {h: self.labels[h] for h in self.heads if self.labels[h] in df} if labels is None else labels
        raw, cal = self.predict(df, "logged", calibrated=False), self.predict(df, "logged")
        result: dict[str, dict[str, float]] = {}
        for head, lab in labels.items():
            y = (df[lab] if isinstance(lab, str) else pd.Series(lab)).to_numpy(dtype=float)
            r, c = raw[OUTPUTS[head]].to_numpy(), cal[OUTPUTS[head]].to_numpy()
            m: dict[str, float] = {"rows": float(len(y)), "label_mean": float(y.mean())}
            if head in BINARY_HEADS:
                for suffix, p in (("_raw", r), ("", c)):
                    m["auc" + suffix] = _auc(y, p)
                    m["logloss" + suffix] = log_loss(y, p)
                    m["ece" + suffix] = expected_calibration_error(y, p)
                # Standard errors: how far another test window of this size could move them (the gate
                # widens its tolerances by them, see training/gate.py).
                m["auc_se"] = _auc_se(m["auc"], int(y.sum()), int(len(y) - y.sum()))
                m["logloss_se"] = _logloss_se(y, c)
                m["method"] = self.calibrators[head].method  # type: ignore[assignment]
            else:
                for suffix, p in (("_raw", r), ("", c)):
                    m["rmse" + suffix] = float(np.sqrt(np.mean((p - y) ** 2)))
                    m["pred_mean" + suffix] = float(p.mean())
            result[head] = m
        return result

    # --- persistence ---------------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "xgboost": xgb.__version__, "heads": self.heads, "features": self.features,
            "position": self.position, "serve_position": self.serve_position, "monotone": self.monotone,
            "labels": self.labels, "params": self.params, "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds, "seed": self.seed,
            "calibration": self.calibration, "value_objective": self.value_objective,
            "trees": {h: b.num_boosted_rounds() for h, b in self.boosters.items()},
            "calibrators": {h: c.to_dict() for h, c in self.calibrators.items()},
            "calibration_scores": self.calibration_scores, "value_scale": self.value_scale,
        }

    def _model_bytes(self) -> dict[str, bytes]:
        return {h: bytes(b.save_raw("json")) for h, b in self.boosters.items()}

    def save(self, directory: str | Path) -> Path:
        """Write <head>.json (XGBoost JSON models) and manifest.json into `directory`."""
        if not self.boosters:
            raise RuntimeError("MultiTaskRanker is not fitted")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        models = self._model_bytes()
        for head, blob in models.items():
            (d / f"{head}.json").write_bytes(blob)
        manifest = {**self._manifest(), "version": _content_hash(self._manifest(), models)}
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, directory: str | Path, nthread: int = 2) -> MultiTaskRanker:
        """Read a `save`d model (scoring with `nthread` threads: a runtime setting, not part of the
        model or its version); raises ValueError when the files do not match the manifest hash."""
        d = Path(directory)
        m = json.loads((d / "manifest.json").read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"unsupported ranker format {m.get('format')!r}")
        r = cls(m["params"], m["num_boost_round"], m["early_stopping_rounds"], m["seed"], nthread,
                m["calibration"], m["value_objective"], m["serve_position"], m["labels"])
        r.features, r.position, r.monotone = m["features"], m["position"], m["monotone"]
        models = {h: (d / f"{h}.json").read_bytes() for h in m["heads"]}
        for head, blob in models.items():
            booster = xgb.Booster()
            booster.load_model(bytearray(blob))
            booster.set_param({"nthread": r.nthread})
            r.boosters[head] = booster
        r.calibrators = {h: Calibrator.from_dict(c) for h, c in m["calibrators"].items()}
        r.calibration_scores, r.value_scale = m["calibration_scores"], m["value_scale"]
        r.version = m["version"]
        body = {k: v for k, v in m.items() if k != "version"}
        if _content_hash(body, models) != r.version:
            raise ValueError(f"{d}: model files do not match manifest version {r.version}")
        return r


def _content_hash(manifest: Mapping[str, Any], models: Mapping[str, bytes]) -> str:
    """sha256 of the canonical manifest JSON and every head's model bytes, in head order (16 hex)."""
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for head in sorted(models):
        h.update(head.encode() + b"\0" + models[head])
    return h.hexdigest()[:16]


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from its value and the class counts."""
    if not np.isfinite(auc) or n_pos < 1 or n_neg < 1:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def _logloss_se(y: np.ndarray, p: np.ndarray) -> float:
    """Standard error of the mean log loss (per-row losses' spread over sqrt(rows)), clipped as `log_loss` is."""
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else float("nan")


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if np.unique(y).size < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))
