"""The reloader with a fake registry: follows champion, challenger, holdback and the experiment,
swaps one state by reference, loads only what moved (off the loop's thread), and never lets a failing
challenger or holdback touch the champion."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eightbox.serving.arms import ServingState
from eightbox.serving.experiments import ExperimentConfig
from eightbox.serving.reloader import NoChampion, Reloader


class Models:
    """Stands in for a ModelSet: what the reloader reads of one is ``versions["model"]``."""

    def __init__(self, version):
        self.versions = {"model": version}


class Registry:
    def __init__(self):
        self.aliases = {"champion": None, "challenger": None, "holdback": None}
        self.experiment, self.experiment_error = {}, None
        self.fail_poll, self.fail_load, self.loads, self.threads = False, set(), [], []

    def poll(self):
        if self.fail_poll:
            raise ConnectionError("mlflow down")
        return {**self.aliases, "experiment": self.experiment, "experiment_error": self.experiment_error}

    def load(self, arm, version):
        self.loads.append((arm, version))
        self.threads.append(threading.current_thread().name)
        if version in self.fail_load:
            raise OSError(f"artifact of v{version} missing")
        return Models(version)


def _reloader(reg, served):
    return Reloader(reg.poll, reg.load, lambda state: served.__setitem__("state", state), interval_s=0.01)


def test_every_arm_is_loaded_off_the_loop_once_and_swapped_in_one_state():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)

    async def go():
        with pytest.raises(NoChampion):
            await reloader.check()
        reg.aliases.update(champion="2", challenger="3", holdback="1")
        reg.experiment = {"challenger_share": 0.5, "shadow": True, "salt": "x"}
        first = await reloader.check()
        same = await reloader.check()
        return first, same, threading.current_thread().name

    first, same, loop_thread = asyncio.run(go())
    state = served["state"]
    assert dict(state.versions) == {"champion": "2", "challenger": "3", "holdback": "1"}
    assert state.experiment == ExperimentConfig(challenger_share=0.5, shadow_challenger=True,
                                                model_salt="model-x", interleave_salt="interleave-x")
    assert first["version"] == "2" and first["changed"] and first["challenger"] == "3" and first["holdback"] == "1"
    assert not same["changed"] and sorted(reg.loads) == [("challenger", "3"), ("champion", "2"), ("holdback", "1")]
    assert loop_thread not in reg.threads and reloader.state is state


def test_a_promotion_reuses_the_models_in_memory_and_loads_only_the_new_version():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)
    reg.aliases.update(champion="1", challenger="2")
    asyncio.run(reloader.check())
    before = served["state"]
    reg.aliases.update(champion="2", challenger=None, holdback="1")  # registry.promote("2")
    asyncio.run(reloader.check())
    after = served["state"]
    assert after.champion is before.challenger and after.holdback is before.champion and after.challenger is None
    assert len(reg.loads) == 2, "nothing loaded again"
    reg.experiment = {"challenger_share": 0.2}  # only the experiment moves: a new state, no load
    asyncio.run(reloader.check())
    assert served["state"] is not after and served["state"].champion is after.champion and len(reg.loads) == 2


def test_a_challenger_that_fails_to_load_is_left_out_and_retried_and_the_champion_is_served():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)
    reg.aliases.update(champion="1", challenger="2")
    reg.fail_load = {"2"}
    result = asyncio.run(reloader.check())
    state = served["state"]
    assert state.champion.versions["model"] == "1" and state.challenger is None and result["challenger"] is None
    assert reloader.stats()["load_failures"] == 1 and "challenger v2" in reloader.last_error
    reg.fail_load = set()
    asyncio.run(reloader.check())
    assert served["state"].challenger.versions["model"] == "2" and served["state"].champion is state.champion


def test_a_failed_champion_load_or_poll_keeps_the_whole_state_and_is_counted():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)
    reg.aliases.update(champion="1")
    asyncio.run(reloader.check())
    old = served["state"]
    reg.aliases.update(champion="2", challenger="3")
    reg.fail_load = {"2"}
    with pytest.raises(OSError):
        asyncio.run(reloader.check())
    reg.fail_load, reg.fail_poll = set(), True
    with pytest.raises(ConnectionError):
        asyncio.run(reloader.check())
    assert served["state"] is old and reloader.current == "1"
    stats = reloader.stats()
    assert stats["load_failures"] == 1 and stats["poll_failures"] == 1 and stats["champion_version"] == 1.0


def test_refused_experiment_tags_send_everyone_to_the_champion_and_are_counted():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)
    reg.aliases.update(champion="1", challenger="2")
    reg.experiment = {"challenger_share": 0.5}
    asyncio.run(reloader.check())
    assert served["state"].experiment.challenger_share == 0.5
    reg.experiment_error = "challenger_share must be a number in [0, 1], got 7.0"
    asyncio.run(reloader.check())
    assert served["state"].experiment == ExperimentConfig() and reloader.stats()["experiment_failures"] == 1


def test_a_forced_check_reloads_the_champion_even_when_it_did_not_move():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)
    reg.aliases.update(champion="1")
    asyncio.run(reloader.check())
    first = served["state"].champion
    asyncio.run(reloader.check(force=True))
    assert served["state"].champion is not first and reg.loads == [("champion", "1"), ("champion", "1")]


def test_the_background_poll_picks_up_a_moved_alias_and_survives_failures():
    reg, served = Registry(), {}
    reloader = _reloader(reg, served)

    async def go():
        reg.fail_poll = True
        reloader.start()
        await asyncio.sleep(0.05)
        reg.fail_poll = False
        reg.aliases.update(champion="3")
        for _ in range(100):
            if "state" in served:
                break
            await asyncio.sleep(0.01)
        await reloader.stop()

    asyncio.run(go())
    assert served["state"].versions["champion"] == "3" and reloader.stats()["poll_failures"] >= 1


def test_a_state_names_versions_only_for_the_arms_it_has_models_for():
    state = ServingState(champion=Models("1"), versions={"champion": "1", "challenger": "2"})
    assert dict(state.versions) == {"champion": "1", "challenger": None, "holdback": None}
