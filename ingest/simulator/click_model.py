"""The click model: how a shown slate turns into clicks and (delayed) engagements.

Position-based model: P(click at position p) = examination(p) * attractiveness(item), with
examination(p) = (1 + p) ** -position_bias (users look less far down the slate) and
attractiveness = sigmoid(bias + w_rel * relevance + w_pop * popularity_z). Positions are
independent given the slate, which keeps the oracle exact and cheap.

A click may be followed by an engagement (watch / like / purchase), more likely when relevance
is high, after a lognormal label delay of minutes to hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SimConfig


@dataclass(frozen=True)
class Outcomes:
    """What happened at each slate position (arrays of the slate's length)."""

    click_prob: np.ndarray
    clicked: np.ndarray  # bool
    click_delay_s: np.ndarray  # seconds after the impression
    engaged: np.ndarray  # bool, only ever True where clicked
    kind: np.ndarray  # index into SimConfig.engagement_kinds
    value: np.ndarray  # watch: fraction watched in (0, 1]; like / purchase / rate: 1.0
    engage_delay_s: np.ndarray  # seconds after the click (label delay)


class ClickModel:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self._kinds = [k for k, _ in cfg.engagement_kinds]
        w = np.array([p for _, p in cfg.engagement_kinds], dtype=float)
        self._kind_cdf = np.cumsum(w / w.sum())
        self._watch = self._kinds.index("watch") if "watch" in self._kinds else -1

    def kind_name(self, index: int) -> str:
        return self._kinds[index]

    def examination(self, positions: np.ndarray | int) -> np.ndarray:
        """Probability that a user looks at a position; strictly decreasing when position_bias > 0."""
        return (1.0 + np.asarray(positions, dtype=float)) ** -self.cfg.position_bias

    def attractiveness(self, relevance: np.ndarray, pop_z: np.ndarray) -> np.ndarray:
        """Probability of a click once examined."""
        c = self.cfg
        logit = c.attraction_bias + c.relevance_weight * np.asarray(relevance) + c.popularity_weight * np.asarray(pop_z)
        return 1.0 / (1.0 + np.exp(-logit))

    def click_probability(self, relevance: np.ndarray, pop_z: np.ndarray, positions: np.ndarray | int) -> np.ndarray:
        return self.examination(positions) * self.attractiveness(relevance, pop_z)

    def engagement_probability(self, relevance: np.ndarray) -> np.ndarray:
        c = self.cfg
        return np.clip(c.engagement_base + c.engagement_relevance_weight * np.asarray(relevance), 0.0, 1.0)

    def sample(self, rng: np.random.Generator, relevance: np.ndarray, pop_z: np.ndarray) -> Outcomes:
        """Sample one slate's outcomes; position p of the arrays is slate position p.

        Every position consumes the same random draws whatever happens, so two policies run on
        the same seed see the same visits and the same per-position luck (common random numbers),
        which makes comparisons between policies far less noisy.
        """
        c = self.cfg
        k = len(relevance)
        u_click, u_engage, u_kind = rng.random((3, k))
        z_dwell, z_value, z_delay = rng.standard_normal((3, k))

        prob = self.click_probability(relevance, pop_z, np.arange(k))
        clicked = u_click < prob
        # Clicks land a few seconds after the slate is shown, later further down the page.
        click_delay = 2.0 + 1.5 * np.arange(k) + np.exp(1.0 + 0.5 * z_dwell)
        engaged = clicked & (u_engage < self.engagement_probability(relevance))
        kind = np.searchsorted(self._kind_cdf, u_kind, side="right").clip(0, len(self._kinds) - 1)
        # Watch fraction grows with relevance; other kinds are a plain 1.0.
        watched = np.clip(0.15 + 0.7 * np.maximum(relevance, 0.0) + 0.15 * z_value, 0.01, 1.0)
        value = np.where(kind == self._watch, watched, 1.0)
        delay = np.exp(np.log(c.engagement_delay_median_minutes * 60.0) + c.engagement_delay_sigma * z_delay)
        delay = np.clip(delay, c.engagement_delay_min_minutes * 60.0, c.engagement_delay_max_hours * 3600.0)
        return Outcomes(prob, clicked, click_delay, engaged, kind, value, delay)
