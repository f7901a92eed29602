"""Feeding event sources (the simulator, MovieLens) through the ingestion gateway, with progress."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eightbox.settings import Settings

from .producer import EventProducer
from .schema import _Event
from .simulator import Marketplace, SimConfig

QUICK_WORLD = dict(n_users=500, n_items=400, n_creators=60, sessions_per_hour=120.0)


def simulation_events(hours: float, seed: int, quick: bool = False, after_hours: float = 0.0,
                      start: datetime | None = None) -> tuple[Marketplace, list[_Event]]:
    """A seeded world's traffic from `after_hours` to `after_hours + hours`, in event-time order,
    with the world's bootstrap events when starting from the beginning. Replaying the clock to
    `after_hours` first makes consecutive calls continue one world instead of repeating it. The
    world's clock starts at `start` (default: the simulator's fixed date)."""
    config = SimConfig(seed=seed, **(QUICK_WORLD if quick else {}), **({"start": start} if start else {}))
    market = Marketplace(config)
    if after_hours:
        for _ in market.simulate(hours=after_hours):
            pass
        return market, list(market.simulate(hours=hours))
    return market, [*market.bootstrap_events(), *market.simulate(hours=hours)]


def publish_events(settings: Settings, events: Iterable[_Event], label: str = "events",
                   total: int | None = None, producer: EventProducer | None = None) -> Counter:
    """Publish through the gateway (validated, pseudonymized); returns counts by event type."""
    events = list(events) if total is None else events
    total = total if total is not None else len(events)  # type: ignore[arg-type]
    counts: Counter = Counter()
    own = producer is None
    producer = producer or EventProducer(settings)
    started = time.monotonic()
    with Progress(TextColumn(f"  publishing {label}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total)
        for i, event in enumerate(events, 1):
            producer.publish(event)
            counts[event.event_type] += 1  # type: ignore[attr-defined]
            if i % 2000 == 0:
                bar.update(task, completed=i)
        producer.flush()
        bar.update(task, completed=total)
    if own:
        producer.close()
    rate = total / max(time.monotonic() - started, 1e-9)
    print(f"  published {total} events ({rate:,.0f}/s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts


def publish_simulation(settings: Settings, hours: float, seed: int, quick: bool = False,
                       start: datetime | None = None) -> Counter:
    _, events = simulation_events(hours, seed, quick, start=start)
    return publish_events(settings, events, label=f"{hours:g} simulated hours")
