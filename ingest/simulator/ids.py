"""Deterministic, unique identifiers.

Entity ids are formatted from indices ("u00042", "i00042", "c0042"). Event and request ids
must look random yet be reproducible, so they are not uuid4: each event gets a unique integer
*slot* (what it is, e.g. "event 3 of visit 17"), and the slot goes through a keyed 64-bit
bijection. A bijection cannot collide, so ids are unique within a run by construction; the
key and a 32-bit run salt come from the seeded RNG, so another seed gives other ids.
"""

from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1

# Slot namespaces (top bits) so that signups, publications and visit events never share a slot.
_USER, _ITEM, _VISIT, _REQUEST = 1, 2, 3, 4
_NS_SHIFT = 60
_PER_VISIT_BITS = 12  # up to 4096 events per visit (3 per slate position at most)


def user_id(index: int) -> str:
    return f"u{index:05d}"


def item_id(index: int) -> str:
    return f"i{index:05d}"


def creator_id(index: int) -> str:
    return f"c{index:04d}"


def _mix64(x: int) -> int:
    """SplitMix64's finalizer: every step (xor-shift, odd multiply) is invertible mod 2**64."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class IdFactory:
    """Event and request ids for one run; pure functions of (seed, slot)."""

    def __init__(self, rng: np.random.Generator):
        self._key = int(rng.integers(0, 1 << 63)) * 2 + 1
        self._salt = f"{int(rng.integers(0, 1 << 32)):08x}"

    def _hex(self, namespace: int, n: int) -> str:
        if n >= 1 << _NS_SHIFT:
            raise OverflowError("id slot out of range")
        slot = (namespace << _NS_SHIFT) | n
        return f"{self._salt}{_mix64((slot + self._key) & _M64):016x}"

    def signup_event(self, user_index: int) -> str:
        return self._hex(_USER, user_index)

    def publish_event(self, item_index: int) -> str:
        return self._hex(_ITEM, item_index)

    def visit_event(self, visit_seq: int, k: int) -> str:
        """The k-th event produced in answer to visit number `visit_seq`."""
        if not 0 <= k < 1 << _PER_VISIT_BITS:
            raise OverflowError("too many events for one visit")
        return self._hex(_VISIT, (visit_seq << _PER_VISIT_BITS) | k)

    def request(self, visit_seq: int) -> str:
        return "r" + self._hex(_REQUEST, visit_seq)
