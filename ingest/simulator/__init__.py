"""Synthetic marketplace: users, items and creators with hidden tastes, an exact click oracle,
cold-start arrivals, preference drift and delayed labels, emitted as schema.py events.

    from eightbox.ingest.simulator import Marketplace, SimConfig, oracle_policy
    m = Marketplace(SimConfig(seed=1))
    events = m.bootstrap_events() + list(m.simulate(hours=24))
"""

from .click_model import ClickModel
from .config import SimConfig
from .ids import creator_id, item_id, user_id
from .marketplace import Marketplace, SimEvent
from .policies import Policy, oracle_policy, popularity_policy, random_policy
from .profiles import category_name
from .traffic import Visit

__all__ = [
    "ClickModel",
    "Marketplace",
    "Policy",
    "SimConfig",
    "SimEvent",
    "Visit",
    "category_name",
    "creator_id",
    "item_id",
    "oracle_policy",
    "popularity_policy",
    "random_policy",
    "user_id",
]
