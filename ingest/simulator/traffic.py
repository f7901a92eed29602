"""Traffic: when things happen. Visits, user signups and item publications are independent
Poisson processes, plus a first visit shortly after each signup (a new user is a cold-start user).

Times are float seconds since SimConfig.start. Each process draws its gaps from its own RNG
stream one event at a time, so the timeline does not depend on how a caller chunks the hours
(visits(2) equals visits(1) then visits(1)), nor on the policy that serves the visits.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Literal

import numpy as np

from .config import SimConfig
from .world import World

FIRST_VISIT_MEAN_S = 120.0  # a new user's first session starts about two minutes after signup

Kind = Literal["user", "item", "visit"]


@dataclass(frozen=True)
class Visit:
    """One request for a slate: `user_id` opens the app at `at`. `seq` numbers visits from 0 in
    time order and seeds the visit's own outcomes, so respond() is order-independent."""

    user_id: str
    at: datetime
    request_id: str
    seq: int


class Traffic:
    """Merges the arrival processes into one time-ordered stream of (t, kind, user index).

    For kind "user" the index is that of the user about to be created (world.n_users): the
    caller must add exactly that user before asking for the next entry. For "item" it is -1.
    """

    def __init__(self, cfg: SimConfig, world: World, rngs: tuple[np.random.Generator, ...]):
        self._world = world
        self._rng_visit, self._rng_user, self._rng_item = rngs
        self._visit_gap = 3600.0 / cfg.sessions_per_hour if cfg.sessions_per_hour > 0 else math.inf
        self._user_gap = 3600.0 / cfg.new_users_per_hour if cfg.new_users_per_hour > 0 else math.inf
        self._item_gap = 3600.0 / cfg.new_items_per_hour if cfg.new_items_per_hour > 0 else math.inf
        self._next_visit = self._gap(self._rng_visit, self._visit_gap)
        self._next_user = self._gap(self._rng_user, self._user_gap)
        self._next_item = self._gap(self._rng_item, self._item_gap)
        self._first_visits: list[tuple[float, int]] = []  # (time, user index), a heap
        self._cum_activity = np.zeros(0)

    def set_visit_rate(self, sessions_per_hour: float) -> None:
        """Visits per hour from the next one on (a replayed world served live at another rate)."""
        self._visit_gap = 3600.0 / sessions_per_hour if sessions_per_hour > 0 else math.inf

    @staticmethod
    def _gap(rng: np.random.Generator, mean: float) -> float:
        return float(rng.exponential(mean)) if math.isfinite(mean) else math.inf

    def _pick_user(self) -> int:
        """A returning user, with probability proportional to their activity."""
        activity = self._world.user_activity.view
        if len(self._cum_activity) != len(activity):  # users arrived: refresh the CDF
            self._cum_activity = np.cumsum(activity)
        u = float(self._rng_visit.random()) * self._cum_activity[-1]
        return min(int(np.searchsorted(self._cum_activity, u, side="right")), len(activity) - 1)

    def until(self, end_s: float) -> Iterator[tuple[float, Kind, int]]:
        """Entries with time <= end_s, in non-decreasing time; ties: arrivals before visits."""
        while True:
            first = self._first_visits[0][0] if self._first_visits else math.inf
            t = min(self._next_user, self._next_item, first, self._next_visit)
            if t > end_s:
                return
            if t == self._next_user:
                user = self._world.n_users
                self._next_user += self._gap(self._rng_user, self._user_gap)
                heapq.heappush(self._first_visits, (t + self._gap(self._rng_user, FIRST_VISIT_MEAN_S), user))
                yield t, "user", user
            elif t == self._next_item:
                self._next_item += self._gap(self._rng_item, self._item_gap)
                yield t, "item", -1
            elif t == first:
                _, user = heapq.heappop(self._first_visits)
                yield t, "visit", user
            else:
                self._next_visit += self._gap(self._rng_visit, self._visit_gap)
                yield t, "visit", self._pick_user()
