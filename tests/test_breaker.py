"""The circuit breaker: closed -> open -> half-open -> closed, backoff, lost probes, threads."""

from __future__ import annotations

import threading

import pytest

from runtime import ManualClock
from runtime.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition

pytestmark = pytest.mark.timeout(60)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker(clock: ManualClock, **config: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**config), clock=clock)  # type: ignore[arg-type]


def trip(b: CircuitBreaker, faults: int = 5) -> None:
    for _ in range(faults):
        assert b.allow()
        b.record_fault()


def probe_ok(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_success()


def path(b: CircuitBreaker) -> list[tuple[BreakerState, BreakerState]]:
    return [(t.source, t.target) for t in b.transitions()]


def test_defaults_are_the_documented_ones() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.cooldown, config.success_threshold) == (5, 30.0, 10)
    assert (config.max_cooldown, config.probe_timeout, config.enabled) == (300.0, 10.0, True)


def test_a_full_cycle_closed_open_half_open_closed() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b, 4)
    assert b.state is CLOSED  # four faults in a row are not enough
    b.record_success()  # and a success breaks the streak
    trip(b, 4)
    assert b.state is CLOSED
    trip(b, 1)
    assert b.state is OPEN
    assert not b.allow()
    clock.advance(29.999)
    assert not b.allow()
    clock.advance(0.001)
    assert b.state is HALF_OPEN
    probe_ok(b, 9)
    assert b.state is HALF_OPEN
    probe_ok(b, 1)
    assert b.state is CLOSED
    assert path(b) == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    stats = b.statistics()
    assert (stats.total_faults, stats.transitions, stats.cooldown) == (9, 3, 30.0)
    assert stats.opened_at == 1000.0
    # The half-open transition is stamped with its due time, not when it was noticed.
    assert b.transitions()[1].at == 1030.0


def test_only_one_probe_at_a_time_while_half_open() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b)
    clock.advance(30.0)
    assert b.allow()
    assert not b.allow()  # the probe is out: everyone else is refused
    assert not b.allow()
    b.record_success()
    assert b.allow()  # the next probe


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b)
    cooldowns = []
    for _ in range(6):
        cooldown = b.statistics().cooldown
        cooldowns.append(cooldown)
        clock.advance(cooldown - 0.5)
        assert not b.allow()
        clock.advance(0.5)
        probe_ok(b, 3)  # some successes do not close it ...
        assert b.allow()
        b.record_fault()  # ... a fault among the probes reopens it at once
        assert b.state is OPEN
    assert cooldowns == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert b.statistics().cooldown == 300.0
    clock.advance(300.0)
    probe_ok(b, 10)
    assert b.state is CLOSED
    assert b.statistics().cooldown == 30.0  # reset to the base once closed
    trip(b)
    clock.advance(30.0)
    assert b.state is HALF_OPEN


def test_a_lost_probe_counts_as_a_fault_after_the_probe_timeout() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b)
    clock.advance(30.0)
    assert b.allow()  # the probe is never reported
    clock.advance(9.999)
    assert not b.allow()
    assert b.state is HALF_OPEN
    clock.advance(0.001)
    assert b.state is OPEN
    stats = b.statistics()
    assert (stats.cooldown, stats.total_faults, stats.opened_at) == (60.0, 6, 1040.0)
    assert b.transitions()[-1].reason == "probe timed out"
    b.record_success()  # the lost probe's late report changes nothing
    assert b.state is OPEN
    clock.advance(60.0)
    assert b.allow()


def test_a_long_silence_applies_every_due_transition_in_order() -> None:
    clock = ManualClock()
    b = breaker(clock, cooldown=1.0, probe_timeout=1.0)
    trip(b)
    clock.advance(1.0)
    assert b.allow()
    clock.advance(100.0)  # probe lost at 1002, reopened for 2 s, half-open again at 1004
    assert b.state is HALF_OPEN
    assert path(b) == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]
    assert [t.at for t in b.transitions()] == [1000.0, 1001.0, 1002.0, 1004.0]


def test_a_disabled_breaker_never_opens_but_still_counts() -> None:
    clock = ManualClock()
    b = breaker(clock, enabled=False)
    trip(b, 100)
    assert b.state is CLOSED
    assert b.allow()
    stats = b.statistics()
    assert (stats.total_faults, stats.consecutive_faults, stats.transitions) == (100, 100, 0)


def test_reset_closes_at_once() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b)
    b.reset()
    assert b.state is CLOSED
    assert b.allow()
    assert path(b)[-1] == (OPEN, CLOSED)


def test_transitions_since_returns_only_the_new_ones_and_history_is_bounded() -> None:
    clock = ManualClock()
    b = breaker(clock, history=3)
    trip(b)
    seen = b.statistics().transitions
    clock.advance(30.0)
    b.allow()
    b.record_fault()
    new = b.transitions(since=seen)
    assert [(t.source, t.target) for t in new] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    clock.advance(60.0)
    probe_ok(b, 10)
    assert b.statistics().transitions == 5
    assert len(b.transitions()) == 3
    assert path(b)[-1] == (HALF_OPEN, CLOSED)


def test_the_callback_sees_each_transition_once_and_may_use_the_breaker() -> None:
    clock = ManualClock()
    seen: list[Transition] = []

    def observe(transition: Transition) -> None:
        seen.append(transition)
        assert b.statistics().transitions >= len(seen)  # no deadlock: called outside the lock

    b = CircuitBreaker(clock=clock, on_transition=observe)
    trip(b)
    clock.advance(30.0)
    assert b.state is HALF_OPEN
    assert [(t.source, t.target) for t in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_a_failing_callback_does_not_break_callers() -> None:
    def explode(_: Transition) -> None:
        raise RuntimeError("observer bug")

    b = CircuitBreaker(clock=ManualClock(), on_transition=explode)
    trip(b)
    assert b.state is OPEN


@pytest.mark.parametrize(
    "config",
    [
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"cooldown": -1.0},
        {"probe_timeout": 0.0},
        {"cooldown_factor": 0.5},
        {"max_cooldown": 1.0},
        {"history": 0},
    ],
)
def test_invalid_configs_are_refused(config: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**config)  # type: ignore[arg-type]


def test_concurrent_callers_claim_exactly_one_probe() -> None:
    clock = ManualClock()
    b = breaker(clock)
    trip(b)
    clock.advance(30.0)
    threads = 16
    barrier = threading.Barrier(threads)
    granted: list[bool] = []
    lock = threading.Lock()

    def contend() -> None:
        barrier.wait()
        allowed = b.allow()
        with lock:
            granted.append(allowed)

    workers = [threading.Thread(target=contend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(granted) == [False] * (threads - 1) + [True]


def test_concurrent_reports_keep_the_counts_exact() -> None:
    b = breaker(ManualClock(), enabled=False)
    threads, per_thread = 8, 500
    barrier = threading.Barrier(threads)

    def report() -> None:
        barrier.wait()
        for i in range(per_thread):
            b.allow()
            if i % 2:
                b.record_fault()
            else:
                b.record_success()

    workers = [threading.Thread(target=report) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert b.statistics().total_faults == threads * per_thread // 2
