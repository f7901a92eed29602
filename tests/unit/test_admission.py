"""Load shedding: a hard cap on requests in flight; the excess is rejected at once, never queued."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from eightbox.serving.admission import ConcurrencyLimiter, Shed


def test_concurrent_tasks_beyond_the_limit_are_shed_at_once_while_the_admitted_ones_run():
    limiter = ConcurrencyLimiter(max_in_flight=5)
    running, most_at_once = 0, 0

    async def main():
        gate = asyncio.Event()  # holds the admitted requests in flight until every task has arrived

        async def request():
            nonlocal running, most_at_once
            try:
                async with limiter:
                    running += 1
                    most_at_once = max(most_at_once, running)
                    await gate.wait()
                    running -= 1
                    return "served"
            except Shed:
                return "shed"

        tasks = [asyncio.create_task(request()) for _ in range(50)]
        await asyncio.sleep(0)  # every task runs up to its admission decision
        # The shed ones are already finished while the admitted ones are still waiting: no queueing.
        assert sum(t.done() for t in tasks) == 45 and limiter.in_flight == 5
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert results.count("served") == 5 and results.count("shed") == 45
    assert most_at_once == 5
    assert limiter.stats() == {"in_flight": 0, "max_in_flight": 5, "admitted": 5, "shed": 45, "peak": 5}


def test_slots_come_back_when_the_request_fails_or_is_cancelled():
    limiter = ConcurrencyLimiter(max_in_flight=2)

    async def failing():
        async with limiter:
            raise ValueError("handler bug")

    async def main():
        for _ in range(10):
            with pytest.raises(ValueError):
                await failing()
        hung = asyncio.create_task(_hold(limiter))
        await asyncio.sleep(0)
        assert limiter.in_flight == 1
        hung.cancel()  # a client that disconnects mid-request
        with pytest.raises(asyncio.CancelledError):
            await hung

    asyncio.run(main())
    assert limiter.in_flight == 0 and limiter.admitted == 11 and limiter.shed == 0


async def _hold(limiter: ConcurrencyLimiter) -> None:
    async with limiter:
        await asyncio.sleep(3600)


def test_capacity_is_reusable_after_release():
    limiter = ConcurrencyLimiter(max_in_flight=1)
    with limiter:
        with pytest.raises(Shed):
            with limiter:
                pass
    with limiter:
        assert limiter.in_flight == 1
    assert limiter.stats()["admitted"] == 2 and limiter.stats()["shed"] == 1


def test_an_unmatched_release_is_an_error_not_extra_capacity():
    limiter = ConcurrencyLimiter(max_in_flight=1)
    with pytest.raises(RuntimeError):
        limiter.release()
    assert limiter.try_acquire() and not limiter.try_acquire()


def test_the_limit_holds_across_threads():
    limiter = ConcurrencyLimiter(max_in_flight=3)
    start = threading.Barrier(8)

    def worker() -> int:
        start.wait()
        admitted = 0
        for _ in range(2_000):
            if limiter.try_acquire():
                admitted += 1
                assert limiter.in_flight <= 3
                limiter.release()
        return admitted

    with ThreadPoolExecutor(8) as pool:
        admitted = sum(pool.map(lambda _: worker(), range(8)))
    stats = limiter.stats()
    assert stats["admitted"] == admitted and stats["admitted"] + stats["shed"] == 16_000
    assert stats["in_flight"] == 0 and stats["peak"] <= 3


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        ConcurrencyLimiter(0)
