"""Climb the promotion ladder for real: apply `promotion.decide`'s actions to the registry and to
serving's experiment tags, and record every rung on the model version (MLflow tags ``ladder.*``).

The runner is driven by its caller's clock (`step(now)`): the closed loop calls it at simulated
times, a scheduler at wall-clock ones. Evidence comes from a callable (`ladder_evidence.from_lake`
reads the lake), so the runner itself holds no data logic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from eightbox.settings import Settings

from . import registry
from .promotion import NEXT_RUNG, Decision, Evidence, LadderConfig, LadderState, decide, experiment_for

log = logging.getLogger(__name__)

EvidenceFn = Callable[[LadderState, datetime], Evidence]


@dataclass
class LadderRunner:
    settings: Settings
    evidence: EvidenceFn
    config: LadderConfig = field(default_factory=LadderConfig)
    model_name: str = registry.MODEL_NAME
    state: LadderState | None = None
    log: list[tuple[datetime, str, Decision]] = field(default_factory=list)  # (at, version, decision)

    @property
    def active(self) -> bool:
        return self.state is not None and self.state.rung in ("challenger", "shadow", "canary", "champion")

    def start(self, version: str, now: datetime) -> LadderState:
        """Begin the climb of `version`, which must hold ``challenger`` (passed the offline gate)."""
        if self.active:
            raise registry.RegistryError(f"v{self.state.version} is still on the ladder ({self.state.rung})")
        self.state = LadderState(str(version), "challenger", now, (("challenger", now, "passed the offline gate"),))
        self._tag("challenger", now, "passed the offline gate")
        return self.state

    def step(self, now: datetime) -> Decision:
        """Decide on the current rung with the evidence since it began, and apply the decision."""
        if not self.active:
            return Decision("wait", ("no model on the ladder",))
        decision = decide(self.state, self.evidence(self.state, now), now, self.config)
        self.log.append((now, self.state.version, decision))
        if decision.action == "wait":
            return decision
        rung = NEXT_RUNG[decision.action]
        note = "; ".join(decision.reasons)
        if decision.action == "promote":
            registry.promote(self.settings, self.state.version, model_name=self.model_name)
        elif decision.action == "rollback":
            registry.rollback(self.settings, model_name=self.model_name)
        elif decision.action == "reject":
            self._drop_challenger()
        registry.set_serving_experiment(self.settings, self.model_name, **experiment_for(rung, self.config))
        self.state = self.state.moved(rung, now, note)
        self._tag(rung, now, note)
        log.info("ladder: v%s %s → %s (%s)", self.state.version, decision.action, rung, note)
        return decision

    def _tag(self, rung: str, at: datetime, note: str) -> None:
        tags = {f"ladder.{rung}": at.isoformat(), f"ladder.{rung}.note": note[:4000], "ladder.rung": rung,
                "ladder.config": json.dumps(self.config.__dict__, sort_keys=True)}
        with registry._mlflow(self.settings) as client:
            for key, value in tags.items():
                client.set_model_version_tag(self.model_name, self.state.version, key, value)

    def _drop_challenger(self) -> None:
        """A rejected challenger loses its alias (if it still holds it), so nothing serves it again."""
        with registry._mlflow(self.settings) as client:
            holder = registry._alias_version(client, self.model_name, registry.CHALLENGER)
            if holder is not None and holder.version == self.state.version:
                client.delete_registered_model_alias(self.model_name, registry.CHALLENGER)
