"""The value formula: one number per candidate from the calibrated heads, used to order a slate.

    score = w_click * p_click + w_engaged * p_engaged + w_value * value

Every head of `MultiTaskRanker` is an expectation *per impression* (P(click | shown),
P(engagement | shown), E[engagement value | shown]), so the score is the expected utility of
showing the item, with each weight the worth of one unit of that outcome measured in clicks.
Because the heads are already unconditional, they are added, not chained: multiplying
p_engaged by p_click (the form used when the engagement head is P(engaged | click)) would count
the click twice. Adding expectations only makes sense when they are calibrated: a head that is
right in order but off in scale would silently reweight the formula, which is why the ranker
calibrates every head on the validation window before this is applied.

With non-negative weights the score is non-decreasing in every head, so a feature declared
monotone in the ranker stays monotone in the final score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ValueWeights:
    """Worth of one unit of each outcome, in clicks. Defaults are starting points to tune online.

    click: 1.0 — the unit.
    engaged: 2.0 — an engagement (watch, like, purchase) is worth two clicks on top of its click:
        engagements follow about four clicks in ten, so this tilts towards items people stay with
        without letting the rarer label dominate.
    value: 1.0 — per unit of engagement value (fraction watched, or 1.0 for a like / purchase).
    """

    click: float = 1.0
    engaged: float = 2.0
    value: float = 1.0

    def __post_init__(self) -> None:
        if min(self.click, self.engaged, self.value) < 0:
            raise ValueError("value weights must be >= 0 (a negative weight rewards what we do not want)")


def value_score(pred_df: pd.DataFrame, weights: ValueWeights | None = None) -> np.ndarray:
    """Scores, one per row of `pred_df` (the output of `MultiTaskRanker.predict`), float64.

    Needs p_click; p_engaged and value are used when present (a model trained without an
    engagement or value head ranks on what it has), so callers pass calibrated predictions.
    """
    w = weights or ValueWeights()
    if "p_click" not in pred_df:
        raise KeyError("pred_df needs a p_click column")
    score = w.click * pred_df["p_click"].to_numpy(dtype=float)
    if "p_engaged" in pred_df:
        score = score + w.engaged * pred_df["p_engaged"].to_numpy(dtype=float)
    if "value" in pred_df:
        score = score + w.value * pred_df["value"].to_numpy(dtype=float)
    return score
