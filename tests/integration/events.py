"""Event fixtures for integration tests: many valid events with traceable ids, and bad input."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

from eightbox.ingest.schema import Client, ItemClicked, ItemEngaged

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def click_stream(prefix: str, n: int, hours: float = 6.0, seed: int = 0) -> list:
    """n clicks and engagements spread over `hours`, slightly out of order, ids `<prefix>-<i>`."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        at = T0 + timedelta(seconds=i * hours * 3600 / n + rng.uniform(-600, 600))
        user, item = f"u{rng.randrange(2000)}", f"i{rng.randrange(5000)}"
        if i % 5 == 4:
            events.append(ItemEngaged(event_id=f"{prefix}-{i}", event_time=at, user_id=user, item_id=item,
                                      kind="watch", value=rng.random()))
        else:
            events.append(ItemClicked(event_id=f"{prefix}-{i}", event_time=at, user_id=user, item_id=item,
                                      position=rng.randrange(10), surface="home",
                                      client=Client(ip=f"10.0.{i % 250}.{i % 200}", device_id=f"dev-{user}")))
    return events


def malformed_inputs(max_bytes: int) -> dict[str, bytes]:
    """One example of each kind of bad input, by the word its reason should contain."""
    ok = {"event_type": "item_clicked", "event_time": "2026-11-20T10:00:00Z", "user_id": "u1", "item_id": "i1"}
    return {
        "user_id": json.dumps({k: v for k, v in ok.items() if k != "user_id"}).encode(),  # missing field
        "position": json.dumps({**ok, "position": "third"}).encode(),  # wrong type
        "event_time": json.dumps({**ok, "event_time": "yesterday-ish"}).encode(),  # unparseable timestamp
        "oversize": json.dumps({**ok, "surface": "x" * (max_bytes + 10)}).encode(),
        "not JSON": b"\x00\xffnot json at all{",
        "event_type": json.dumps({**ok, "event_type": "item_teleported"}).encode(),
    }
