"""SimConfig: every knob of the synthetic marketplace, frozen so a config can key a run.

The defaults give a small world (2,000 users, 1,000 items) whose simulated day is roughly
60,000 events and takes a few seconds; tests shrink it further.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..schema import EngagementKind

DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SimConfig:
    """Parameters of one simulated marketplace. Same config => same world and same events."""

    seed: int = 0
    # --- initial world -----------------------------------------------------------------
    n_users: int = 2000
    n_items: int = 1000
    n_categories: int = 12
    n_creators: int = 150
    dim: int = 16  # size of the latent preference/item vectors and of the content vector
    start: datetime = DEFAULT_START  # tz-aware; bootstrap events carry this time
    # --- arrivals (Poisson processes, per simulated hour) -------------------------------
    new_users_per_hour: float = 20.0
    new_items_per_hour: float = 4.0
    sessions_per_hour: float = 250.0
    slate_size: int = 10
    # --- latent geometry ----------------------------------------------------------------
    item_spread: float = 0.5  # noise of an item around its category centroid
    user_spread: float = 0.7  # noise of a user around their favourite categories
    content_noise: float = 0.5  # content vector = item latent + this much noise (informative)
    popularity_alpha: float = 1.0  # Zipf exponent: popularity of the rank-r item is r**-alpha
    # --- drift: after drift_at each user's taste moves toward another category -----------
    drift_at: datetime | None = None
    drift_strength: float = 0.5  # 0 = no change, 1 = taste replaced by the new direction
    # --- click model: P(click) = examination(pos) * attractiveness(rel, pop) ---------------
    position_bias: float = 0.8  # examination(pos) = (1 + pos) ** -position_bias
    attraction_bias: float = -3.0
    relevance_weight: float = 4.0
    popularity_weight: float = 0.5  # weight of standardized log-popularity (item "quality")
    # --- engagement after a click (the delayed label) -------------------------------------
    engagement_base: float = 0.3  # P(engage | click) = base + weight below * relevance
    engagement_relevance_weight: float = 0.4
    engagement_kinds: tuple[tuple[EngagementKind, float], ...] = field(
        default=(("watch", 0.6), ("like", 0.3), ("purchase", 0.1))
    )
    engagement_delay_median_minutes: float = 20.0  # lognormal label delay after the click
    engagement_delay_sigma: float = 1.3
    engagement_delay_min_minutes: float = 1.0
    engagement_delay_max_hours: float = 48.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("SimConfig.start must be timezone-aware")
        if self.drift_at is not None and (self.drift_at.tzinfo is None or self.drift_at.utcoffset() is None):
            raise ValueError("SimConfig.drift_at must be timezone-aware")
        if self.seed < 0:
            raise ValueError("SimConfig.seed must be >= 0 (it seeds a numpy SeedSequence)")
        for name in ("n_users", "n_items", "n_categories", "n_creators", "dim", "slate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimConfig.{name} must be >= 1")
        for name in ("new_users_per_hour", "new_items_per_hour", "sessions_per_hour"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0")
        if not 0.0 <= self.drift_strength <= 1.0:
            raise ValueError("SimConfig.drift_strength must be within [0, 1]")
        # Event ids pack the in-visit event index into 12 bits (see ids.py): at most
        # 3 events (impression, click, engagement) per slate position.
        if self.slate_size > 1000:
            raise ValueError("SimConfig.slate_size must be <= 1000")
        if not self.engagement_kinds or any(p < 0 for _, p in self.engagement_kinds):
            raise ValueError("SimConfig.engagement_kinds needs non-negative weights")
        if self.engagement_delay_min_minutes <= 0:
            raise ValueError("SimConfig.engagement_delay_min_minutes must be > 0 (label after click)")
