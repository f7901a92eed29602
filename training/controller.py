"""The loop's controller on the wall clock: ``python -m eightbox.training.controller``, supervised by
`eightbox up` (deploy/controller_service.py) and a service of docker-compose.yml.

What the closed-loop demo (eightbox/loop.py) does after each simulated day, done by the clock. Every
``controller_interval_s`` one `Controller.tick(now)`:

1. the nightly batch, once a day from ``controller_nightly_hour`` (UTC): the Spark backfill of the
   whole days not yet done, then Feast materialization (`features.nightly`);
2. the promotion ladder's step, when a model is climbing (`LadderRunner`, on the lake's evidence);
3. otherwise a retrain when one is due (`retrain_trigger`): a concept-drift alert in the monitoring
   service's results since the last retrain, or the schedule (``controller_retrain_every_h``); with
   no champion at all, the first model as soon as the lake holds impressions. The candidate learns
   from the last ``controller_train_window_days``; one that passes the offline gate starts up the
   ladder (the first model of a registry becomes champion directly).

Its state (the last nightly day, the last retrain, the ladder's rung and history) is a JSON file in
the run folder, rewritten after every change, so a restarted controller carries on the climb where it
was. A step that fails (MLflow away, an empty lake) is logged, kept in the heartbeat and tried again at
the next tick; a failed nightly batch after `RETRY_AFTER`, and a failed retrain counts as the retrain,
so it waits for the next trigger instead of starting Spark or training every minute.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from eightbox.settings import Settings

from .promotion import LadderState
from .retrain_trigger import drift_alerts, first_model_due, nightly_days, retrain_reason

log = logging.getLogger("eightbox.controller")
RETRY_AFTER = timedelta(minutes=30)  # after a failed nightly batch (not every tick: it starts Spark)


@dataclass
class ControllerState:
    started: datetime | None = None  # first tick: the schedule counts from here until a retrain
    nightly_done: date | None = None  # the last day the nightly batch covered
    last_retrain: datetime | None = None
    ladder: LadderState | None = None

    def to_json(self) -> str:
        ladder = None if self.ladder is None else {
            "version": self.ladder.version, "rung": self.ladder.rung, "since": self.ladder.since.isoformat(),
            "history": [[rung, at.isoformat(), note] for rung, at, note in self.ladder.history]}
        return json.dumps({"started": _iso(self.started), "nightly_done": _iso(self.nightly_done),
                           "last_retrain": _iso(self.last_retrain), "ladder": ladder}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ControllerState":
        d = json.loads(text)
        ladder = d.get("ladder")
        if ladder is not None:
            ladder = LadderState(ladder["version"], ladder["rung"], datetime.fromisoformat(ladder["since"]),
                                 tuple((r, datetime.fromisoformat(at), note) for r, at, note in ladder["history"]))
        return cls(started=_time(d.get("started")), nightly_done=date.fromisoformat(d["nightly_done"])
                   if d.get("nightly_done") else None, last_retrain=_time(d.get("last_retrain")), ladder=ladder)


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def state_path(settings: Settings) -> Path:
    return settings.run_dir / "controller-state.json"  # not controller.json: the supervisor's own file


@dataclass
class Retrained:
    version: str
    source: str  # where its examples came from: "logged" (serving's own impressions) or "point_in_time"
    note: str  # one line: what was trained, why, and what the gate said
    challenger: bool  # passed the gate and holds `challenger` (the ladder can start)


def retrain(settings: Settings, as_of: datetime, why: str, *, window: timedelta | None, tower_epochs: int = 8,
            progress: Callable[[str], None] = print) -> Retrained:
    """One retrain as of `as_of` through the training pipeline, without promotion (the ladder decides
    that), except that a registry's first model becomes champion."""
    from .datasets import load_dataset
    from .pipeline import TrainConfig, train

    result = train(settings, TrainConfig(as_of=as_of, promote="if-first", tower_epochs=tower_epochs,
                                         model_name=settings.serving_model_name, window=window), progress=progress)
    source = str(load_dataset(result.dataset).manifest.get("source", "?"))
    if "champion" in result.aliases:
        return Retrained(result.version, source, f"trained v{result.version} ({why}) on {source} features: the first "
                                         "model, champion", False)
    if result.gate_passed:
        return Retrained(result.version, source, f"retrained v{result.version} ({why}) on {source} features: "
                                         "gate passed → shadow", True)
    return Retrained(result.version, source, f"retrained v{result.version} ({why}): gate refused "
                                     f"({'; '.join(result.gate_reasons)[:200]})", False)


RetrainFn = Callable[[Settings, datetime, str], Retrained]
NightlyFn = Callable[[Settings, date, date], object]


class Controller:
    """`tick(now)` does what is due at `now` and returns one note per thing done. `retrain_fn`,
    `nightly_fn` and `evidence` default to the real pipeline, the Spark/Feast batch and the lake."""

    def __init__(self, settings: Settings, *, retrain_fn: RetrainFn | None = None,
                 nightly_fn: NightlyFn | None = None, evidence=None, monotonic: Callable[[], float] = time.monotonic):
        from .ladder_evidence import from_lake
        from .ladder_runner import LadderRunner

        self.settings = settings
        self.path = state_path(settings)
        self.state = ControllerState.from_json(self.path.read_text()) if self.path.exists() else ControllerState()
        self.ladder = LadderRunner(settings, evidence or from_lake(settings), settings.controller_ladder_config,
                                   model_name=settings.serving_model_name, state=self.state.ladder)
        self.retrain_fn = retrain_fn or self._retrain
        self.nightly_fn = nightly_fn or _nightly
        self.nightly_retry_at = datetime.min.replace(tzinfo=timezone.utc)
        self.monotonic = monotonic

    def tick(self, now: datetime) -> list[str]:
        notes: list[str] = []
        if self.state.started is None:
            self.state.started = now
            self._save()
        days = nightly_days(now, self.state.nightly_done, self.settings.controller_nightly_hour)
        if days and now >= self.nightly_retry_at:
            span = f"{days[0]}" + (f" … {days[-1]}" if len(days) > 1 else "")
            try:
                self.nightly_fn(self.settings, days[0], days[-1])
            except Exception as e:  # Spark or Feast failed: the ladder still steps; the batch waits a while
                self.nightly_retry_at = now + RETRY_AFTER
                notes.append(f"error: nightly batch {span} failed ({type(e).__name__}: {e}); "
                             f"next try from {self.nightly_retry_at:%H:%M}")
            else:
                self.state.nightly_done = days[-1]
                self._save()
                notes.append(f"nightly batch: {span}")
        if self.ladder.active:
            before = self.ladder.state.rung
            decision = self.ladder.step(now)
            self._save()
            if decision.action != "wait":
                notes.append(f"ladder v{self.ladder.state.version}: {before} → {self.ladder.state.rung} "
                             f"({'; '.join(decision.reasons)})")
            return notes
        notes += self._maybe_retrain(now)
        return notes

    def _maybe_retrain(self, now: datetime) -> list[str]:
        from eightbox.monitoring.lake_table import read_results

        from . import registry

        if registry.champion_version(self.settings, self.settings.serving_model_name) is None:
            alerts = []
            why = "first model" if first_model_due(now, self.state.last_retrain, self._has_impressions(now)) else None
        else:
            since = self.state.last_retrain or self.state.started
            alerts = drift_alerts(read_results(self.settings, since=since.date()), self.settings.serving_model_name,
                                  since)
            every = timedelta(hours=self.settings.controller_retrain_every_h) or None
            why = retrain_reason(now, since, every, len(alerts))
        if why is None:
            return []
        self.state.last_retrain = now  # before training: a failure waits for the next trigger
        self._save()
        began = self.monotonic()
        done = self.retrain_fn(self.settings, now, why)
        notes = [*(f"concept drift: {a}" for a in alerts), done.note]
        if done.challenger:
            # The climb starts when the candidate exists, minutes after `now`: a shadow window counted
            # from `now` would be that much shorter than configured.
            ready = now + timedelta(seconds=self.monotonic() - began)
            self.ladder.start(done.version, ready)
            self.ladder.step(ready)  # shadow starts now, not a tick later
            self._save()
            notes.append(f"ladder v{done.version}: challenger → {self.ladder.state.rung}")
        return notes

    def _has_impressions(self, now: datetime) -> bool:
        from eightbox.features.backfill import lake_files

        days = self.settings.controller_train_window_days or 365.0
        return bool(lake_files(self.settings.lake_dir, "impression_served", now - timedelta(days=days), now))

    def _retrain(self, settings: Settings, now: datetime, why: str) -> Retrained:
        days = settings.controller_train_window_days
        return retrain(settings, now, why, window=timedelta(days=days) if days else None, progress=log.info)

    def _save(self) -> None:
        from eightbox.periodic import replace_file

        self.state.ladder = self.ladder.state
        replace_file(self.path, self.state.to_json().encode())


def _nightly(settings: Settings, first_day: date, last_day: date) -> None:
    from eightbox.features.nightly import run_nightly

    log.info("nightly batch %s … %s: %s", first_day, last_day, run_nightly(settings, first_day, last_day))


def main() -> None:
    from eightbox.periodic import run_periodic

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    controller = Controller(settings)

    def work() -> dict:
        try:
            notes = controller.tick(datetime.now(timezone.utc))
        except Exception as e:  # the service outlives a failed step; the next tick tries again
            log.warning("controller tick failed: %s: %s", type(e).__name__, e)
            return {"error": f"{type(e).__name__}: {e}", "rung": _rung(controller)}
        for note in notes:
            (log.warning if note.startswith("error:") else log.info)("%s", note)
        errors = [n for n in notes if n.startswith("error:")]
        return {"error": errors[-1] if errors else None, "rung": _rung(controller), "notes": notes}

    run_periodic(heartbeat_path(settings), settings.controller_interval_s, work)


def _rung(controller: Controller) -> str | None:
    state = controller.ladder.state
    return f"v{state.version} {state.rung}" if state is not None else None


def heartbeat_path(settings: Settings) -> Path:
    return settings.run_dir / "controller.heartbeat"


if __name__ == "__main__":
    main()
