"""Intake: admission checks and their order, Retry-After, draining, counters, restarts."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.intake.limits import ClientBuckets, DrainRate, TokenBucket
from actors.intake.protocol import (
    Admitted,
    CrashIntake,
    Ending,
    ShedReason,
    StartDraining,
    StopDraining,
    Tokenized,
)
from actors.intake.settings import IntakeSettings
from actors.intake.state import IntakeState
from runtime import ActorDied, ManualClock
from tests.intake_harness import never, request, running
from tests.support import worker

pytestmark = pytest.mark.timeout(60)


# -- admission through the actor ---------------------------------------------------------


async def test_admits_with_position_and_estimate() -> None:
    async with running() as intake:
        first = await intake.admitted("r1", chars=100)
        second = await intake.admitted("r2", chars=3)
        assert (first.position, first.prompt_tokens) == (1, 50 + 8)
        assert (second.position, second.prompt_tokens) == (2, 2 + 8)
        stats = await intake.stats()
        assert (stats.in_flight, stats.in_flight_prompt_tokens, stats.admitted_total) == (2, 68, 2)


async def test_draining_and_pressure_refuse_before_the_bucket_is_charged() -> None:
    async with running(IntakeSettings(rate_limit_per_second=0.01, rate_limit_burst=2)) as intake:
        await intake.admitted("r1")
        stats = await intake.stats(StartDraining())
        assert stats.draining and stats.in_flight == 1
        for n in range(3):
            refused = await intake.rejected(f"d{n}")
            assert refused.reason is ShedReason.DRAINING and refused.retry_after == 1
        await intake.release("r1")
        assert (await intake.stats()).in_flight == 0  # the drain is over
        assert not (await intake.stats(StopDraining())).draining
        intake.pressure.value = True
        for n in range(3):
            refused = await intake.rejected(f"p{n}")
            assert refused.reason is ShedReason.PRESSURE and "pressure" in refused.detail
        stats = await intake.stats()
        assert stats.under_pressure and (stats.shed_pressure, stats.shed_draining) == (3, 3)
        intake.pressure.value = False
        await intake.admitted("r2")  # the second token of the burst: none was spent above
        assert (await intake.rejected("r3")).reason is ShedReason.RATE_LIMITED


async def test_rate_limit_retry_after_is_the_time_until_a_token() -> None:
    async with running(IntakeSettings(rate_limit_per_second=0.25, rate_limit_burst=2)) as intake:
        await intake.admitted("r1")
        await intake.admitted("r2")
        refused = await intake.rejected("r3")
        assert refused.reason is ShedReason.RATE_LIMITED
        assert refused.retry_after == 4  # one token every 4 s
        intake.clock.advance(2.5)
        assert (await intake.rejected("r4")).retry_after == 2  # 1.5 s left, rounded up
        intake.clock.advance(1.5)
        await intake.admitted("r5")
        await intake.admitted("r6", client="someone-else")  # buckets are per client


async def test_queue_full_until_a_release_frees_a_slot() -> None:
    async with running(IntakeSettings(queue_max_requests=2)) as intake:
        await intake.admitted("same", chars=10)
        await intake.admitted("same", chars=100)  # a client-chosen id may repeat
        refused = await intake.rejected("r3")
        assert refused.reason is ShedReason.QUEUE_FULL and "2 requests in flight" in refused.detail
        await intake.release("same")  # one booking each, the oldest first
        stats = await intake.stats()
        assert (stats.in_flight, stats.in_flight_prompt_tokens) == (1, 58)
        assert (await intake.admitted("r4")).position == 2


async def test_tokens_full_counts_the_estimate_and_admits_a_lone_giant() -> None:
    async with running(IntakeSettings(queue_max_prompt_tokens=100)) as intake:
        lone = await intake.admitted("giant", chars=10_000)  # nothing else in flight
        assert lone.prompt_tokens == 5_008
        assert (await intake.rejected("small", chars=0)).reason is ShedReason.TOKENS_FULL
        await intake.release("giant")
        await intake.admitted("r1", chars=100)  # 58 tokens
        await intake.admitted("r2", chars=52)  # 34: 92 in all
        await intake.admitted("r3", chars=0)  # 8 more: exactly the limit
        refused = await intake.rejected("r4", chars=0)
        assert refused.reason is ShedReason.TOKENS_FULL


async def test_tokenized_replaces_the_estimate() -> None:
    async with running(IntakeSettings(queue_max_prompt_tokens=100)) as intake:
        await intake.admitted("r1", chars=160)  # estimated 88
        assert (await intake.rejected("r2", chars=40)).reason is ShedReason.TOKENS_FULL
        await intake.ref.tell(Tokenized(request_id="r1", prompt_tokens=30))
        assert (await intake.stats()).in_flight_prompt_tokens == 30
        await intake.admitted("r2", chars=40)  # 30 + 28
        await intake.ref.tell(Tokenized(request_id="r2", prompt_tokens=70))
        await intake.ref.tell(Tokenized(request_id="unknown", prompt_tokens=5))
        assert (await intake.stats()).in_flight_prompt_tokens == 100
        await intake.release("r2")
        assert (await intake.stats()).in_flight_prompt_tokens == 30


async def test_checks_run_cheapest_first() -> None:
    limits = IntakeSettings(
        queue_max_requests=2,
        queue_max_prompt_tokens=100,
        rate_limit_per_second=1.0,
        rate_limit_burst=1,
    )
    async with running(limits) as intake:
        await intake.admitted("big", client="a", chars=150)  # 83 tokens; a's bucket is empty
        assert (await intake.rejected("x", client="b", chars=100)).reason is ShedReason.TOKENS_FULL
        await intake.admitted("small", client="c")  # 91 tokens, the queue is full
        # Every condition holds for client a now; take them away one at a time.
        intake.pressure.value = True
        await intake.stats(StartDraining())
        reasons = [(await intake.rejected("x", client="a", chars=100)).reason]
        await intake.stats(StopDraining())
        reasons.append((await intake.rejected("x", client="a", chars=100)).reason)
        intake.pressure.value = False
        reasons.append((await intake.rejected("x", client="a", chars=100)).reason)
        reasons.append((await intake.rejected("x", client="d", chars=100)).reason)
        await intake.release("small")
        reasons.append((await intake.rejected("x", client="e", chars=100)).reason)
        assert reasons == [
            ShedReason.DRAINING,
            ShedReason.PRESSURE,
            ShedReason.RATE_LIMITED,
            ShedReason.QUEUE_FULL,
            ShedReason.TOKENS_FULL,
        ]


async def test_bucket_map_stays_bounded() -> None:
    limits = IntakeSettings(rate_limit_per_second=1.0, rate_limit_burst=1, max_clients=3)
    async with running(limits) as intake:
        for n in range(10):
            await intake.admitted(f"r{n}", client=f"client-{n}")
        assert (await intake.stats()).client_buckets == 3
        assert intake.state.buckets.evictions == 7
        # client-0 was forgotten, so it starts again with a full bucket.
        await intake.admitted("again", client="client-0")
        assert (await intake.rejected("again2", client="client-0")).reason is (
            ShedReason.RATE_LIMITED
        )


async def test_retry_after_follows_the_measured_drain_rate() -> None:
    async with running(IntakeSettings(queue_max_requests=4)) as intake:
        for n in range(4):
            await intake.admitted(f"r{n}")
        assert (await intake.rejected("x")).retry_after == 1  # nothing measured yet
        intake.clock.advance(1.0)
        await intake.release("r0")
        intake.clock.advance(1.0)
        await intake.release("r1")
        await intake.admitted("r4")
        await intake.admitted("r5")
        # Two releases in 2 s of busy time: (1 + e^-0.1) / (10 (1 - e^-0.2)) = 1.05/s.
        rate = (await intake.stats()).drain_rate
        assert rate is not None
        assert rate == pytest.approx((1 + math.exp(-0.1)) / (10 * (1 - math.exp(-0.2))))
        assert math.ceil(4 / rate) == 4
        assert (await intake.rejected("y")).retry_after == 4
        intake.clock.advance(100.0)  # nothing leaves: the estimate decays to the floor
        assert (await intake.rejected("z")).retry_after == 40  # 4 / 0.1


async def test_stats_count_by_reason_and_outcome() -> None:
    async with running(IntakeSettings(queue_max_requests=1)) as intake:
        for name, outcome in [
            ("a", Ending.COMPLETED),
            ("b", Ending.FAILED),
            ("c", Ending.CANCELLED_DISCONNECT),
            ("d", Ending.CANCELLED_DEADLINE),
            ("e", Ending.CANCELLED_DEADLINE),
        ]:
            await intake.admitted(name)
            await intake.rejected("full")
            await intake.release(name, outcome)
        await intake.release("a")  # twice: not in flight any more
        intake.pressure.value = True
        await intake.rejected("p")
        stats = await intake.stats()
        assert stats.admitted_total == 5 and stats.in_flight == 0
        assert (stats.completed_total, stats.failed_total) == (1, 1)
        assert (stats.cancelled_disconnect_total, stats.cancelled_deadline_total) == (1, 2)
        assert (stats.shed_queue_full, stats.shed_pressure) == (5, 1)
        assert (stats.shed_draining, stats.shed_rate_limited, stats.shed_tokens_full) == (0, 0, 0)
        assert stats.unknown_releases == 1


async def test_requests_that_are_never_released_are_reclaimed_after_their_deadline() -> None:
    async with running(IntakeSettings(queue_max_requests=1, reclaim_after=30.0)) as intake:
        answer = await intake.admit("lost", deadline=intake.clock.wall() + 10.0)
        assert isinstance(answer, Admitted)
        intake.clock.advance(40.0)  # exactly at the reclaim time: still booked
        assert (await intake.rejected("r1")).reason is ShedReason.QUEUE_FULL
        intake.clock.advance(0.5)
        await intake.admitted("r2")
        await intake.release("lost")  # the late release is not counted twice
        stats = await intake.stats()
        assert (stats.reclaimed_total, stats.unknown_releases, stats.in_flight) == (1, 1, 1)
        assert stats.completed_total == 0


async def test_a_restart_keeps_the_requests_in_flight() -> None:
    async with running(IntakeSettings(queue_max_requests=3)) as intake:
        for n in range(3):
            await intake.admitted(f"r{n}", chars=20)
        await intake.ref.tell(Tokenized(request_id="r0", prompt_tokens=1))
        with pytest.raises(ActorDied):
            await intake.ref.ask(CrashIntake(), timeout=5.0)
        stats = await intake.stats()
        assert worker(intake.system, "intake").restarts_total == 1
        assert (stats.in_flight, stats.in_flight_prompt_tokens) == (3, 1 + 18 + 18)
        assert (await intake.rejected("r3")).reason is ShedReason.QUEUE_FULL
        await intake.release("r1")
        await intake.admitted("r4")


async def test_a_failing_pressure_reading_crashes_intake_without_changing_it() -> None:
    limits = IntakeSettings(rate_limit_per_second=1.0, rate_limit_burst=1)
    async with running(limits) as intake:
        await intake.admitted("r1", client="a")
        intake.pressure.fail = True
        with pytest.raises(ActorDied):
            await intake.admit("r2", client="b")
        stats = await intake.stats()
        assert worker(intake.system, "intake").restarts_total == 1
        assert (stats.in_flight, stats.admitted_total) == (1, 1)
        assert stats.shed_pressure + stats.shed_rate_limited == 0
        await intake.admitted("r3", client="b")  # b was never charged


# -- the state and its settings, without an actor ----------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: IntakeSettings(queue_max_requests=0),
        lambda: IntakeSettings(queue_max_prompt_tokens=0),
        lambda: IntakeSettings(drain_rate_floor=0.0),
        lambda: IntakeSettings(retry_after_default=0),
        lambda: IntakeSettings(retry_after_default=90),
        lambda: IntakeSettings(reclaim_after=-1.0),
        lambda: IntakeSettings(rate_limit_burst=0),
        lambda: IntakeSettings(rate_limit_per_second=-1.0),
        lambda: IntakeSettings(rate_limit_per_second=math.nan),
        lambda: IntakeSettings(max_clients=0),
        lambda: IntakeSettings(drain_time_constant=0.0),
        lambda: IntakeSettings(reclaim_after=math.nan),
        lambda: ClientBuckets(rate=-1.0, burst=1, max_clients=1),
        lambda: DrainRate(time_constant=math.inf),
        lambda: TokenBucket(rate=0.0, burst=1, now=0.0),
    ],
)
def test_bad_settings_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "release", "tokenized", "advance"]),
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=0, max_value=400),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(ops=ops)
def test_the_books_always_balance(ops: list[tuple[str, int, int]]) -> None:
    limits = IntakeSettings(queue_max_requests=3, queue_max_prompt_tokens=300, reclaim_after=5.0)
    state = IntakeState(limits)
    clock = ManualClock()
    for op, n, size in ops:
        now, wall = clock.monotonic(), clock.wall()
        if op == "admit":
            state.admit(
                request(f"r{n}", chars=size, deadline=wall), now=now, wall=wall, pressure=never
            )
        elif op == "release":
            state.release(f"r{n}", Ending.COMPLETED, now=now)
        elif op == "tokenized":
            state.tokenized(f"r{n}", size)
        else:
            clock.advance(size / 40)
        stats = state.stats(now=clock.monotonic(), wall=clock.wall(), under_pressure=False)
        ended = stats.completed_total + stats.reclaimed_total
        assert stats.admitted_total == stats.in_flight + ended
        assert 0 <= stats.in_flight <= limits.queue_max_requests
        assert stats.in_flight_prompt_tokens >= 0
        if stats.in_flight == 0:
            assert stats.in_flight_prompt_tokens == 0
        assert stats.drain_rate is None or stats.drain_rate >= 0


def test_deadlines_of_released_requests_do_not_pile_up() -> None:
    state = IntakeState(IntakeSettings(reclaim_after=0.0))
    for n in range(1_000):
        admit = request(f"r{n}", deadline=n + 600.0)
        assert isinstance(state.admit(admit, now=n, wall=n, pressure=never), Admitted)
        state.release(f"r{n}", Ending.COMPLETED, now=n)
    assert len(state._deadlines) <= 64 + 1  # compacted, not one per request ever admitted
    for n, deadline in enumerate([math.nan, 5.0, math.inf]):  # only 5.0 can come due
        state.admit(request(f"d{n}", deadline=deadline), now=0.0, wall=0.0, pressure=never)
    assert state.reclaim(now=0.0, wall=1e6) == 1
    assert state.in_flight == 2
