"""The champion reloader with fakes: swaps by reference when the alias moves, keeps the old models
on a failed poll or load (counted), and never loads on the event loop's thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eightbox.serving.reloader import NoChampion, Reloader


class Registry:
    def __init__(self):
        self.version, self.fail_load, self.fail_poll, self.loads = None, False, False, []

    def champion(self):
        if self.fail_poll:
            raise ConnectionError("mlflow down")
        return self.version

    def load(self, version):
        self.loads.append(threading.current_thread().name)
        if self.fail_load:
            raise OSError("artifact missing")
        return {"model": version}


def _reloader(reg, served):
    return Reloader(reg.champion, reg.load, lambda m: served.__setitem__("models", m), interval_s=0.01)


def test_the_models_are_swapped_only_when_the_alias_moves_and_loaded_off_the_loop():
    reg, served = Registry(), {"models": None}
    reloader = _reloader(reg, served)

    async def go():
        with pytest.raises(NoChampion):
            await reloader.check()
        reg.version = "1"
        first = await reloader.check()
        same = await reloader.check()
        return first, same, threading.current_thread().name

    first, same, loop_thread = asyncio.run(go())
    assert first["changed"] and first["version"] == "1" and served["models"] == {"model": "1"}
    assert not same["changed"] and len(reg.loads) == 1 and loop_thread not in reg.loads


def test_a_failed_load_or_poll_keeps_the_old_models_and_is_counted():
    reg, served = Registry(), {"models": None}
    reloader = _reloader(reg, served)
    reg.version = "1"
    asyncio.run(reloader.check())
    old = served["models"]
    reg.version, reg.fail_load = "2", True
    with pytest.raises(OSError):
        asyncio.run(reloader.check())
    reg.fail_load, reg.fail_poll = False, True
    with pytest.raises(ConnectionError):
        asyncio.run(reloader.check())
    assert served["models"] is old and reloader.current == "1"
    stats = reloader.stats()
    assert stats["load_failures"] == 1 and stats["poll_failures"] == 1 and stats["champion_version"] == 1.0


def test_the_background_poll_picks_up_a_moved_alias_and_survives_failures():
    reg, served = Registry(), {"models": None}
    reloader = _reloader(reg, served)

    async def go():
        reg.fail_poll = True
        reloader.start()
        await asyncio.sleep(0.05)
        reg.fail_poll, reg.version = False, "3"
        for _ in range(100):
            if served["models"] is not None:
                break
            await asyncio.sleep(0.01)
        await reloader.stop()

    asyncio.run(go())
    assert served["models"] == {"model": "3"} and reloader.stats()["poll_failures"] >= 1
