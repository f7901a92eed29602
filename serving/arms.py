"""Experiment arms in serving: which models answer a request, and how.

`ServingState` is the one immutable object a serving process swaps on reload: each arm's `ModelSet`
(champion, challenger, holdback; None where the registry has none or it did not load) and the
`ExperimentConfig` read from the registry's experiment tags. `ArmRouter.recommend` reads the state
once per request, assigns the user (`ExperimentConfig.assign`), and runs the funnel:

- champion, challenger, holdback: the funnel on that arm's models; the answer names the arm
  (``experiment_arm``) and the versions of the models that answered (``model_versions``);
- interleaved: champion and challenger together (the user's history read once), shown as a
  team-draft interleaving of the two lists; each item carries its team (the arm that contributed it),
  and ``model_versions`` holds the champion's versions plus the challenger's as ``challenger.<key>``;
- shadow: the champion answers; `ShadowScorer` scores the challenger after the answer is built.

A missing challenger or holdback sends its users to the champion (degrade, don't fail); an
interleaved request whose challenger answered on a lower rung than the champion is served the
champion's list alone, labelled "champion".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .api_models import RUNGS, answer_from_recommendation
from .experiments import CHALLENGER, CHAMPION, HOLDBACK, INTERLEAVED, ExperimentConfig
from .interleaving import team_draft
from .models import ModelSet

ARMS = (CHAMPION, CHALLENGER, HOLDBACK)
TEAMS = {"A": CHAMPION, "B": CHALLENGER}  # team_draft's first list is the champion's


@dataclass(frozen=True, eq=False)
class ServingState:
    """What one serving process answers with; replaced whole (by reference) on every change."""

    champion: ModelSet | None = None
    challenger: ModelSet | None = None
    holdback: ModelSet | None = None
    experiment: ExperimentConfig = ExperimentConfig()
    versions: Mapping[str, str | None] = field(default_factory=dict)  # arm → registry version loaded

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(
            {arm: self.versions.get(arm) if self.models(arm) is not None else None for arm in ARMS}))

    def models(self, arm: str) -> ModelSet | None:
        return {CHAMPION: self.champion, CHALLENGER: self.challenger, HOLDBACK: self.holdback}[arm]

    def same_as(self, other: ServingState) -> bool:
        """The same models (by identity: a ModelSet is never compared field by field) and experiment."""
        return all(self.models(arm) is other.models(arm) for arm in ARMS) and \
            self.experiment == other.experiment and self.versions == other.versions


class ArmRouter:
    """`recommend(user_id, k, context, request_id)` is a `ServingDeps.recommend`: the answer dict
    of the user's arm. `install(state)` swaps the state (and ``funnel.models``, which the popularity
    board and the static rung read, to its champion). `shadow`: a `ShadowScorer`, or None."""

    def __init__(self, funnel: Any, state: ServingState, shadow: Any | None = None):
        self.funnel, self.shadow = funnel, shadow
        self.served: Counter[str] = Counter()  # requests per logged arm label, for the metrics
        self.install(state)

    def install(self, state: ServingState) -> None:
        self.state = state  # one reference: a request reads it once, at its start
        self.funnel.models = state.champion

    async def recommend(self, user_id: str, k: int, context: dict, request_id: str) -> dict[str, Any]:
        state = self.state
        ready = state.champion is not None  # without a champion every arm takes the champion's path
        a = state.experiment.assign(user_id, challenger_ready=ready and state.challenger is not None,
                                    holdback_ready=ready and state.holdback is not None)
        if a.interleaved:
            return self._count(await self._interleaved(state, user_id, k, context, request_id))
        rec = await self.funnel.recommend(user_id, k, context, request_id, models=state.models(a.model_arm),
                                          arm=a.model_arm)
        if a.shadow and self.shadow is not None:
            # Scheduled now, run once this handler yields: after the response is built.
            self.shadow.submit(rec, state.challenger, k, context)
        return self._count(_labelled(answer_from_recommendation(rec), a.model_arm))

    async def _interleaved(self, state: ServingState, user_id: str, k: int, context: dict,
                           request_id: str) -> dict[str, Any]:
        recs = await self.funnel.recommend_each({CHAMPION: state.champion, CHALLENGER: state.challenger},
                                                user_id, k, context, request_id)
        champ, chall = answer_from_recommendation(recs[CHAMPION]), answer_from_recommendation(recs[CHALLENGER])
        if RUNGS.index(chall["rung"]) > RUNGS.index(champ["rung"]):
            return _labelled(champ, CHAMPION)  # a degraded challenger is not a fair comparison
        mixed = team_draft([i["item_id"] for i in champ["items"]], [i["item_id"] for i in chall["items"]],
                           k, request_id)
        by_team = {"A": {i["item_id"]: i for i in champ["items"]}, "B": {i["item_id"]: i for i in chall["items"]}}
        items = [{**by_team[team][item_id], "team": TEAMS[team]} for item_id, team in zip(mixed.ids, mixed.teams)]
        stages = [*champ["explanation"]["stages"],
                  *({**s, "name": f"challenger:{s['name']}"} for s in chall["explanation"]["stages"])]
        versions = {**champ["explanation"]["model_versions"],
                    **{f"challenger.{key}": v for key, v in chall["explanation"]["model_versions"].items()}}
        return {"rung": RUNGS[max(RUNGS.index(champ["rung"]), RUNGS.index(chall["rung"]))], "items": items,
                "explanation": {"stages": stages, "model_versions": versions, "experiment_arm": INTERLEAVED}}

    def _count(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.served[answer["explanation"]["experiment_arm"]] += 1
        return answer

    def stats(self) -> dict[str, float]:
        """Requests served per arm label since start, and the registry version of each arm (0: none)."""
        versions = {f"{arm}_version": _number(v) for arm, v in self.state.versions.items()}
        return {**{f"served_{label}": float(n) for label, n in self.served.items()}, **versions}


def _labelled(answer: dict[str, Any], arm: str) -> dict[str, Any]:
    answer["explanation"]["experiment_arm"] = arm
    return answer


def _number(version: str | None) -> float:
    try:
        return float(version) if version is not None else 0.0
    except ValueError:
        return -1.0
