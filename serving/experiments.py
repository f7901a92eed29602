"""Experiment assignment: which model a user sees, decided by a hash of the user id, in layers.

A layer splits all traffic into arms by share. Each layer has its own salt, so a user's arm in one
layer says nothing about their arm in another: layers can run at once without confounding each
other. Assignment is a pure function of (salt, user id): the same user gets the same arm in every
process, on every replica and after every restart, with nothing stored. It uses a keyed digest, never
Python's `hash()`, which is salted per process (PYTHONHASHSEED).

Serving uses two layers (`ExperimentConfig`): "model" (champion vs challenger vs holdback: an A/B
split, plus a long-running holdback kept on the previous champion to measure what the promotions since
have added) and "interleave" (the share of traffic served a team-draft interleaving of champion and
challenger, see `interleaving.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CHAMPION, CHALLENGER, HOLDBACK = "champion", "challenger", "holdback"
INTERLEAVE, OFF = "interleave", "off"
INTERLEAVED = "interleaved"  # the arm label of an interleaved request (see Assignment.label)


def bucket(user_id: str, salt: str) -> float:
    """Uniform in [0, 1), a pure function of (salt, user_id): stable across processes and versions."""
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart; 64 bits make the grid invisible.
    digest = hashlib.blake2b(salt.encode() + b"\0" + user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Layer:
    """Arms with their traffic shares (summing to 1). Arms own consecutive slices of [0, 1) in the
    order given, so reordering arms or changing a share moves users: change the salt to re-shuffle
    deliberately, keep it to keep users where they are."""

    name: str
    salt: str
    arms: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError(f"layer {self.name!r} has no arms")
        if any(not 0.0 <= s <= 1.0 for s in self.arms.values()):
            raise ValueError(f"layer {self.name!r}: every share must be in [0, 1], got {dict(self.arms)}")
        if abs(sum(self.arms.values()) - 1.0) > 1e-9:
            raise ValueError(f"layer {self.name!r}: shares must sum to 1, got {sum(self.arms.values())}")
        if "\0" in self.salt:
            raise ValueError("a salt may not contain NUL (it separates salt from user id)")
        object.__setattr__(self, "arms", MappingProxyType(dict(self.arms)))  # frozen means frozen


def assign(user_id: str, layer: Layer) -> str:
    """The user's arm in this layer: the same for the same (user_id, layer.salt, layer.arms)."""
    u = bucket(user_id, layer.salt)
    upper = 0.0
    for arm, share in layer.arms.items():
        upper += share
        if u < upper:
            return arm
    # Float sums can land a hair under 1.0; the remainder belongs to the last arm that has traffic.
    return [arm for arm, share in layer.arms.items() if share > 0][-1]


@dataclass(frozen=True)
class Assignment:
    """What serving does for one request."""

    model_arm: str  # CHAMPION, CHALLENGER or HOLDBACK: whose ranking is shown when not interleaved
    interleaved: bool  # show a team-draft interleaving of champion and challenger instead
    shadow: bool  # score the challenger too, log its scores, show none of it

    @property
    def label(self) -> str:
        """The arm to log (ImpressionServed.experiment_arm): "champion", "challenger", "holdback" or
        "interleaved".

        The A/B analysis drops "interleaved": since the layers are independent, that removes the
        same fraction of each model arm and leaves the comparison unbiased."""
        return INTERLEAVED if self.interleaved else self.model_arm


@dataclass(frozen=True)
class ExperimentConfig:
    """The layers serving reads. All-zero shares (the default) send everyone to the champion.

    The model layer's slices of [0, 1) are, in order: champion, holdback, challenger. So the
    challenger's users are the top `challenger_share` of the hash whatever the holdback's share, and
    a holdback of 0 leaves every assignment as it was before holdbacks existed."""

    challenger_share: float = 0.0  # A/B: fraction of users whose ranking comes from the challenger
    interleave_share: float = 0.0  # fraction of users served an interleaving of champion and challenger
    shadow_challenger: bool = False  # score the challenger on every request, log it, never show it
    holdback_share: float = 0.0  # fraction of users kept on the previous champion (alias ``holdback``)
    model_salt: str = "model-1"  # bump to re-draw the A/B population (e.g. for a new challenger)
    interleave_salt: str = "interleave-1"
    layers: tuple[Layer, Layer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model_salt == self.interleave_salt:
            raise ValueError("layers need different salts, or their assignments are the same draw")
        if self.challenger_share + self.holdback_share > 1.0 + 1e-9:
            raise ValueError(f"challenger_share + holdback_share must be <= 1, got "
                             f"{self.challenger_share} + {self.holdback_share}")
        champion = max(0.0, 1.0 - self.challenger_share - self.holdback_share)
        model = Layer("model", self.model_salt,
                      {CHAMPION: champion, HOLDBACK: self.holdback_share, CHALLENGER: self.challenger_share})
        interleave = Layer("interleave", self.interleave_salt,
                           {OFF: 1.0 - self.interleave_share, INTERLEAVE: self.interleave_share})
        object.__setattr__(self, "layers", (model, interleave))

    @classmethod
    def from_tags(cls, experiment: Mapping[str, object]) -> ExperimentConfig:
        """From the registry's experiment state (`training.registry.serving_experiment`): one `salt`
        names both layers' salts, so bumping it re-draws every population at once."""
        salt = str(experiment.get("salt", "1"))
        return cls(challenger_share=float(experiment.get("challenger_share", 0.0)),
                   interleave_share=float(experiment.get("interleave_share", 0.0)),
                   shadow_challenger=bool(experiment.get("shadow", False)),
                   holdback_share=float(experiment.get("holdback_share", 0.0)),
                   model_salt=f"model-{salt}", interleave_salt=f"interleave-{salt}")

    def assign(self, user_id: str, challenger_ready: bool = True, holdback_ready: bool = True) -> Assignment:
        """The user's assignment. Without a loaded challenger (`challenger_ready=False`: none
        registered, or it failed to load) its users get the champion and nobody is interleaved or
        shadowed; without a loaded holdback its users get the champion: degrade, don't fail.
        Holdback users see the holdback model alone: never interleaved, never shadowed."""
        model, interleave = self.layers
        arm = assign(user_id, model)
        if arm == HOLDBACK:
            if holdback_ready:
                return Assignment(HOLDBACK, interleaved=False, shadow=False)
            arm = CHAMPION
        if not challenger_ready:
            return Assignment(CHAMPION, interleaved=False, shadow=False)
        interleaved = assign(user_id, interleave) == INTERLEAVE
        # Shadow scoring is only extra work where the challenger is not already being scored.
        shadow = self.shadow_challenger and arm == CHAMPION and not interleaved
        return Assignment(arm, interleaved, shadow)
