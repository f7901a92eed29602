"""Circuit breaker state machine, driven by a fake clock: nothing here sleeps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eightbox.serving.breaker import BreakerOpen, BreakerPolicy, Breakers, CircuitBreaker, State

POLICY = BreakerPolicy(window_calls=20, window_seconds=30.0, min_calls=10, error_rate=0.5,
                       latency_quantile=0.9, latency_s=0.2, open_seconds=5.0, trial_calls=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def breaker(**changes) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    policy = BreakerPolicy(**{**POLICY.__dict__, **changes})
    return CircuitBreaker("redis", policy, clock), clock


def tripped() -> tuple[CircuitBreaker, FakeClock]:
    b, clock = breaker()
    for _ in range(10):
        b.record(False, 0.01)
    assert b.state is State.OPEN
    return b, clock


def test_it_opens_when_the_error_rate_reaches_the_threshold_and_not_before():
    b, _ = breaker()
    for _ in range(6):
        b.record(True, 0.01)
    for expected in [State.CLOSED] * 5 + [State.OPEN]:  # 4/10, 5/11 stay closed; 6/12 = 0.5 opens
        b.record(False, 0.01)
        assert b.state is expected
    assert not b.allow()


def test_it_never_opens_on_fewer_than_the_minimum_calls():
    b, _ = breaker()
    for _ in range(9):
        b.record(False, 0.01)
        assert b.state is State.CLOSED and b.allow()  # 100% errors, but only 9 calls
    b.record(False, 0.01)
    assert b.state is State.OPEN


def test_it_opens_when_the_latency_quantile_reaches_the_threshold():
    b, _ = breaker()
    for _ in range(10):
        b.record(True, 0.05)
    b.record(True, 0.3)  # p90 of 11 calls (nearest rank 10) is still fast
    assert b.state is State.CLOSED
    b.record(True, 0.3)  # p90 of 12 calls (nearest rank 11) is slow
    assert b.state is State.OPEN


def test_latency_is_ignored_without_a_latency_threshold():
    b, _ = breaker(latency_s=None)
    for _ in range(50):
        b.record(True, 10.0)
    assert b.state is State.CLOSED


def test_calls_older_than_the_window_or_beyond_its_length_are_forgotten():
    b, clock = breaker()
    for _ in range(9):
        b.record(False, 0.01)
    clock.now += 31  # those nine age out of the 30 s window
    b.record(False, 0.01)
    assert b.state is State.CLOSED
    b, _ = breaker()
    for _ in range(20):
        b.record(True, 0.01)
    for _ in range(9):
        b.record(False, 0.01)  # 9 of the last 20 calls (but only 9 of all 29)
    assert b.state is State.CLOSED
    b.record(False, 0.01)  # 10 of the last 20: the older successes no longer dilute the rate
    assert b.state is State.OPEN


def test_it_half_opens_after_open_seconds_and_admits_only_the_trial_calls():
    b, clock = tripped()
    clock.now += 4.9
    assert b.state is State.OPEN and not b.allow()
    clock.now += 0.1
    assert b.state is State.HALF_OPEN
    assert b.allow() and not b.allow()  # one trial; the rest still short-circuit


def test_a_successful_trial_closes_it():
    b, clock = tripped()
    clock.now += 5
    assert b.allow()
    b.record(True, 0.01)
    assert b.state is State.CLOSED and b.allow()
    b.record(False, 0.01)  # a closed period is judged on its own calls: one failure is not a trip
    assert b.state is State.CLOSED


@pytest.mark.parametrize("success, latency", [(False, 0.01), (True, 0.5)])
def test_a_failed_or_slow_trial_reopens_it_for_another_open_period(success, latency):
    b, clock = tripped()
    clock.now += 5
    assert b.allow()
    b.record(success, latency)
    assert b.state is State.OPEN and not b.allow()
    clock.now += 5
    assert b.state is State.HALF_OPEN and b.allow()


def test_with_several_trial_calls_all_must_succeed_to_close():
    b, clock = breaker(trial_calls=3)
    for _ in range(10):
        b.record(False, 0.01)
    clock.now += 5
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    b.record(True, 0.01)
    b.record(True, 0.01)
    assert b.state is State.HALF_OPEN
    b.record(True, 0.01)
    assert b.state is State.CLOSED


def test_a_trial_that_never_reports_does_not_leave_it_half_open_forever():
    b, clock = tripped()
    clock.now += 5
    assert b.allow() and not b.allow()  # the trial's caller is cancelled and never records
    clock.now += 5
    assert b.allow()  # a fresh probe


def test_results_of_calls_admitted_before_it_opened_do_not_close_it():
    b, clock = tripped()
    for _ in range(20):
        b.record(True, 0.01)  # stragglers finishing after the trip
    assert b.state is State.OPEN


@pytest.mark.parametrize("success", [True, False])
def test_a_straggler_reporting_once_half_open_neither_closes_nor_reopens_it(success):
    b, clock = tripped()
    clock.now += 5
    assert b.state is State.HALF_OPEN
    b.record(success, 0.01)  # admitted while closed, answered after the open period: before any trial
    assert b.state is State.HALF_OPEN
    assert b.allow() and not b.allow()  # the trial is still to come, and still only one
    b.record(True, 0.01)
    assert b.state is State.CLOSED


def test_guard_records_outcome_and_duration_around_sync_and_async_work():
    b, clock = breaker()
    with pytest.raises(ZeroDivisionError):
        with b.guard():
            1 / 0

    async def slow_lookup():
        with b.guard():
            clock.now += 0.3  # the awaited call takes 0.3 s of (fake) time
            await asyncio.sleep(0)

    for _ in range(9):
        assert b.state is State.CLOSED
        asyncio.run(slow_lookup())
    assert b.state is State.OPEN  # 10 calls, 9 slow: p90 is 0.3 s
    with pytest.raises(BreakerOpen):
        with b.guard():
            pytest.fail("an open breaker must not run the block")


def test_a_cancelled_call_is_not_counted_against_the_dependency():
    b, _ = breaker()
    for _ in range(20):
        with pytest.raises(asyncio.CancelledError):
            with b.guard():
                raise asyncio.CancelledError
    assert b.state is State.CLOSED


def test_concurrent_records_from_threads_are_safe():
    b, _ = breaker(window_calls=100, min_calls=100)
    start = threading.Barrier(8)

    def worker():
        start.wait()
        for _ in range(2_000):
            if b.allow():
                b.record(True, 0.01)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.state is State.CLOSED and len(b._calls) == 100


def test_each_dependency_has_its_own_breaker_and_policy():
    clock = FakeClock()
    board = Breakers({"ann": BreakerPolicy(min_calls=1, window_calls=1)}, default=POLICY, clock=clock)
    board["ann"].record(False, 0.01)
    board["redis"].record(False, 0.01)
    assert board["ann"] is board["ann"]
    assert board.states() == {"ann": "open", "redis": "closed"}


def test_a_policy_that_could_never_trip_is_refused():
    with pytest.raises(ValueError):
        BreakerPolicy(min_calls=60, window_calls=50)
    with pytest.raises(ValueError):
        BreakerPolicy(error_rate=0)
