"""A tiny ranker component for bundle and registry tests: a scikit-learn logistic regression kept as
JSON coefficients (no pickle), with the save(dir) / load(dir) / predict(df) → DataFrame contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

FEATURES = ["f0", "f1", "f2"]


class TinyRanker:
    def __init__(self, coef: list[float], intercept: float, features: list[str] = FEATURES):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.features = list(features)

    @classmethod
    def fit(cls, df: pd.DataFrame, label: str = "y", C: float = 1.0) -> "TinyRanker":
        model = LogisticRegression(C=C).fit(df[FEATURES].to_numpy(), df[label].to_numpy())
        return cls(model.coef_[0].tolist(), float(model.intercept_[0]))

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """One row per input row, in order: the click probability as column ``score``."""
        logits = df[self.features].to_numpy(dtype=np.float64) @ self.coef + self.intercept  # (rows,)
        return pd.DataFrame({"score": 1.0 / (1.0 + np.exp(-logits))}, index=df.index)

    def save(self, directory: Path) -> None:
        # json writes floats as their shortest round-tripping repr: load gives back the same bits.
        (Path(directory) / "coefficients.json").write_text(json.dumps(
            {"coef": self.coef.tolist(), "intercept": self.intercept, "features": self.features}))

    @classmethod
    def load(cls, directory: Path) -> "TinyRanker":
        data = json.loads((Path(directory) / "coefficients.json").read_text())
        return cls(data["coef"], data["intercept"], data["features"])


def toy_data(rows: int = 400, seed: int = 0, noise: float = 1.0) -> pd.DataFrame:
    """Features f0..f2 and a label y that depends on them (more `noise`, a worse model)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    logits = x @ np.array([2.0, -1.0, 0.5]) + noise * rng.normal(size=rows)
    return pd.DataFrame(x, columns=FEATURES).assign(y=(logits > 0).astype(int))
