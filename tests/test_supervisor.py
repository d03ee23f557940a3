"""Supervisor semantics, checked against OTP's: strategies, restart types, intensity,
ordered start and stop, shutdown timeouts, backoff and escalation."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from runtime import (
    NO_BACKOFF,
    ActorDied,
    ActorStopped,
    ActorSystem,
    Backoff,
    ChildStartError,
    DeliveryError,
    ManualClock,
    Restart,
    Strategy,
    SupervisorEscalated,
    SupervisorSpec,
)
from runtime.lifecycle import Crashed, Escalated, Event, Stopped
from runtime.status import ActorStatus, SupervisorStatus
from tests.support import SECRET, Crash, CrashLater, Exit, Hold, Journal, Ping, Pong, probe, worker

pytestmark = pytest.mark.timeout(20)


def flat(
    journal: Journal,
    names: str = "abc",
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 5,
    period: float = 10.0,
    backoff: Backoff = NO_BACKOFF,
) -> SupervisorSpec:
    children = [probe(name, journal) for name in names]
    return SupervisorSpec(
        "root", children, strategy=strategy, intensity=intensity, period=period, backoff=backoff
    )


def incarnations(system: ActorSystem) -> dict[str, int]:
    return {c.name: c.incarnation for c in system.status().root.children}


async def crash(system: ActorSystem, name: str) -> None:
    with pytest.raises(ActorDied):
        await system.ref(name).ask(Crash(), timeout=5)
    await system.wait_idle()


@pytest.mark.parametrize(
    ("strategy", "expected", "stops", "starts"),
    [
        (Strategy.ONE_FOR_ONE, {"a": 1, "b": 2, "c": 1}, ["b"], ["b"]),
        (Strategy.ONE_FOR_ALL, {"a": 2, "b": 2, "c": 2}, ["b", "c", "a"], ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, {"a": 1, "b": 2, "c": 2}, ["b", "c"], ["b", "c"]),
    ],
)
async def test_strategy_restarts_the_right_siblings_in_order(
    strategy: Strategy, expected: dict[str, int], stops: list[str], starts: list[str]
) -> None:
    journal = Journal()
    async with ActorSystem(flat(journal, strategy=strategy)) as system:
        journal.lines.clear()
        await crash(system, "b")
        assert incarnations(system) == expected
        # b's own on_stop runs first (it crashed); siblings stop in reverse start order.
        assert journal.of("stop") == stops
        assert journal.of("start") == starts
        for name in "abc":
            assert await system.ref(name).ask(Ping(n=1), timeout=5) == Pong(
                n=1, incarnation=expected[name]
            )


async def test_one_for_all_does_not_restart_temporary_siblings() -> None:
    journal = Journal()
    spec = SupervisorSpec(
        "root",
        [probe("a", journal), probe("t", journal, restart=Restart.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=NO_BACKOFF,
    )
    async with ActorSystem(spec) as system:
        await crash(system, "a")
        assert incarnations(system) == {"a": 2, "t": 1}
        with pytest.raises(ActorStopped):
            await system.ref("t").ask(Ping(), timeout=5)


RESTARTED = {
    (Restart.PERMANENT, "normal"): True,
    (Restart.PERMANENT, "shutdown"): True,
    (Restart.PERMANENT, "crash"): True,
    (Restart.TRANSIENT, "normal"): False,
    (Restart.TRANSIENT, "shutdown"): False,
    (Restart.TRANSIENT, "crash"): True,
    (Restart.TEMPORARY, "normal"): False,
    (Restart.TEMPORARY, "shutdown"): False,
    (Restart.TEMPORARY, "crash"): False,
}


@pytest.mark.parametrize(("restart", "how"), list(RESTARTED))
async def test_restart_type_matrix(restart: Restart, how: str) -> None:
    journal = Journal()
    spec = SupervisorSpec("root", [probe("x", journal, restart=restart)], backoff=NO_BACKOFF)
    async with ActorSystem(spec) as system:
        ref = system.ref("x")
        with pytest.raises(ActorDied):
            await ref.ask(Crash() if how == "crash" else Exit(reason=how), timeout=5)
        await system.wait_idle()
        status = system.status().root.children[0]
        assert isinstance(status, ActorStatus)
        if RESTARTED[(restart, how)]:
            assert (status.state, status.incarnation) == ("running", 2)
            assert await ref.ask(Ping(), timeout=5) == Pong(n=0, incarnation=2)
        else:
            assert (status.state, status.incarnation) == ("stopped", 1)
            with pytest.raises(ActorStopped):
                await ref.tell(Ping())
        assert (status.last_failure is not None) == (how == "crash")


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal = Journal()
    async with ActorSystem(flat(journal, "abcd")):
        assert journal.lines == ["start a", "start b", "start c", "start d"]
    assert journal.lines[4:] == [f"stop {n} shutdown" for n in "dcba"]


async def test_child_failing_to_start_stops_the_started_ones_and_is_named() -> None:
    journal = Journal(fail_start={"c"})
    nested = SupervisorSpec(
        "inner", [probe("b", journal), probe("c", journal), probe("d", journal)]
    )
    spec = SupervisorSpec("root", [probe("a", journal), nested, probe("e", journal)])
    with pytest.raises(ChildStartError) as failed:
        async with ActorSystem(spec):
            raise AssertionError("the system must not start")
    assert failed.value.child == "root/inner/c"
    assert SECRET not in str(failed.value)
    assert journal.lines == [
        "start a",
        "start b",
        "failstart c",
        "stop b shutdown",
        "stop a shutdown",
    ]


async def test_child_ignoring_cancellation_is_abandoned_after_its_shutdown_timeout() -> None:
    journal = Journal(stubborn={"b"})
    spec = SupervisorSpec(
        "root",
        [probe("a", journal), probe("b", journal, shutdown=0.05), probe("c", journal)],
    )
    async with ActorSystem(spec) as system:
        outcome: list[BaseException] = []

        async def stuck_ask() -> None:
            try:
                await system.ref("b").ask(Hold(key="stuck"), timeout=30)
            except ActorDied as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck_ask)
            await wait_all_tasks_blocked()
            with anyio.fail_after(5):
                await system.stop()
        # a was stopped although b never returned; b's asker was told at once.
        assert journal.of("stop") == ["c", "a"]
        assert "abandoned" in str(outcome[0])
        states = {c.name: c.state for c in system.status().root.children}
        assert states == {"a": "stopped", "b": "abandoned", "c": "stopped"}
        journal.gate("stuck").set()  # let the abandoned task end so the test can finish


async def test_crash_inside_cleanup_is_logged_and_the_rest_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal(stop_raises={"b"})
    async with ActorSystem(flat(journal)):
        pass
    assert journal.of("stop") == ["c", "b", "a"]
    assert "root/b: on_stop failed: RuntimeError" in caplog.text
    assert SECRET not in caplog.text


async def test_a_sibling_crashing_while_the_tree_stops_is_not_restarted() -> None:
    journal = Journal(stop_opens={"c": "boom"})
    async with ActorSystem(flat(journal)) as system:
        events = system.subscribe()
        await system.ref("a").tell(CrashLater(key="boom"))
        await system.stop()  # stopping c makes a crash while b is being stopped
        # a's own cleanup runs when it crashes, possibly before b's: the order
        # of cleanups is not the point, the supervisor's stop order is.
        assert journal.of("stop")[0] == "c"
        assert sorted(journal.of("stop")) == ["a", "b", "c"]
        assert "stop a crash" in journal.lines
        assert incarnations(system) == {"a": 1, "b": 1, "c": 1}
        a = worker(system, "a")
        assert (a.state, a.last_failure is not None) == ("stopped", True)
        stopped = [e for e in drain(events) if isinstance(e, Stopped)]
        assert [(e.path, e.exit) for e in stopped] == [
            ("root/c", "shutdown"),
            ("root/b", "shutdown"),
            ("root/a", "crash"),
        ]
        await events.aclose()


async def test_intensity_boundary_n_restarts_pass_and_n_plus_one_escalates() -> None:
    clock = ManualClock()
    journal = Journal()
    async with ActorSystem(flat(journal, intensity=3, period=10.0), clock=clock) as system:
        for _ in range(3):
            await crash(system, "b")
            clock.advance(1.0)
        assert system.running
        assert incarnations(system)["b"] == 4
        await crash(system, "b")
        assert system.status().failure is not None
        with pytest.raises(SupervisorEscalated, match="more than 3 restarts within 10s"):
            await system.wait()
        with pytest.raises(DeliveryError):
            await system.ref("a").ask(Ping(), timeout=5)
        assert journal.of("stop")[-2:] == ["c", "a"]  # stopped in reverse on escalation
        system.failure = None  # checked above; let the block exit cleanly


async def test_intensity_window_includes_its_boundary_like_otp() -> None:
    clock = ManualClock()
    async with ActorSystem(flat(Journal(), intensity=1, period=10.0), clock=clock) as system:
        await crash(system, "a")
        clock.advance(10.0)  # exactly one period later: the first restart still counts
        await crash(system, "a")
        assert system.failure is not None
        system.failure = None


async def test_crashes_spaced_just_over_the_period_never_escalate() -> None:
    clock = ManualClock()
    async with ActorSystem(flat(Journal(), intensity=1, period=10.0), clock=clock) as system:
        for _ in range(20):
            await crash(system, "a")
            clock.advance(10.001)
        assert system.running
        assert incarnations(system)["a"] == 21


async def test_root_escalation_fails_the_block_with_a_clear_error() -> None:
    with pytest.raises(SupervisorEscalated) as escalated:
        async with ActorSystem(flat(Journal(), intensity=0)) as system:
            with pytest.raises(ActorDied):
                await system.ref("a").ask(Crash(), timeout=5)
            await system.stop()
    assert "'a'" in str(escalated.value)
    assert SECRET not in str(escalated.value)


async def test_nested_supervisor_escalates_to_its_parent_which_restarts_it() -> None:
    journal = Journal()
    inner = SupervisorSpec("inner", [probe("x", journal), probe("y", journal)], intensity=0)
    spec = SupervisorSpec("root", [probe("a", journal), inner], backoff=NO_BACKOFF)
    async with ActorSystem(spec) as system:
        events = system.subscribe()
        await crash(system, "x")
        root = system.status().root
        inner_status = root.children[1]
        assert isinstance(inner_status, SupervisorStatus)
        assert inner_status.restarts_total == 1
        assert [c.incarnation for c in inner_status.children] == [2, 2]
        assert root.children[0].incarnation == 1
        seen = drain(events)
        assert any(isinstance(e, Escalated) and e.path == "root/inner" for e in seen)
        assert any(isinstance(e, Crashed) and e.path == "root/inner" for e in seen)
        assert await system.ref("y").ask(Ping(), timeout=5) == Pong(n=0, incarnation=2)
        await events.aclose()


async def test_backoff_delays_consecutive_restarts_and_resets_after_healthy_run() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=1.0, factor=2.0, cap=4.0, jitter=0.0, reset_after=60.0)
    spec = flat(Journal(), "a", intensity=100, period=1.0, backoff=backoff)
    async with ActorSystem(spec, clock=clock) as system:
        await crash(system, "a")  # first failure: immediate
        assert incarnations(system)["a"] == 2
        for delay in (1.0, 2.0, 4.0, 4.0):
            await crash(system, "a")
            assert system.status().root.children[0].state == "restarting"
            clock.advance(delay - 0.001)
            await system.wait_idle()
            assert system.status().root.children[0].state == "restarting"
            clock.advance(0.001)
            await system.wait_idle()
            assert system.status().root.children[0].state == "running"
        clock.advance(60.0)  # a healthy run resets the count
        await crash(system, "a")
        assert incarnations(system)["a"] == 7


async def test_stop_request_cancels_a_pending_restart() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=5.0, jitter=0.0)
    async with ActorSystem(flat(Journal(), "a", backoff=backoff), clock=clock) as system:
        await crash(system, "a")
        await crash(system, "a")
        assert system.status().root.children[0].state == "restarting"
        with anyio.fail_after(5):
            await system.stop()
        assert system.status().root.children[0].state == "stopped"


def drain(subscription: object) -> list[Event]:
    found: list[Event] = []
    while True:
        try:
            found.append(subscription.receive_nowait())  # type: ignore[attr-defined]
        except anyio.WouldBlock:
            return found


async def test_lifecycle_events_and_a_slow_subscriber_never_blocks() -> None:
    journal = Journal()
    async with ActorSystem(flat(journal, "ab")) as system:
        full = system.subscribe(capacity=64)
        tiny = system.subscribe(capacity=1)  # never read: it must not stall restarts
        for _ in range(3):
            await crash(system, "a")
        assert incarnations(system)["a"] == 4
        kinds = [type(e).__name__ for e in drain(full)]
        assert kinds == ["Crashed", "Restarted"] * 3
        assert tiny.dropped == 5
        assert system.status().events_dropped == 5
        await system.stop()
        stopped = [e for e in drain(full) if isinstance(e, Stopped)]
        assert [e.path for e in stopped] == ["root/b", "root/a"]
        await full.aclose()
        await tiny.aclose()


async def test_status_snapshot_reports_each_actor() -> None:
    clock = ManualClock()
    async with ActorSystem(flat(Journal(), "ab"), clock=clock) as system:
        clock.advance(2.5)
        await crash(system, "b")
        clock.advance(1.0)
        status = system.status()
        a, b = status.root.children
        assert isinstance(a, ActorStatus)
        assert isinstance(b, ActorStatus)
        assert (a.state, a.restarts_total, a.uptime_seconds, a.last_failure) == (
            "running",
            0,
            3.5,
            None,
        )
        assert (b.restarts_in_window, b.restarts_total, b.uptime_seconds) == (1, 1, 1.0)
        assert b.last_failure is not None
        assert b.last_failure.reason.startswith("RuntimeError (in tests.support.handle:")
        assert SECRET not in b.last_failure.reason
        assert b.last_failure.at == clock.wall() - 1.0
        clock.advance(10.0)
        assert system.status().root.children[1].restarts_in_window == 0
        assert status.root.strategy == "one_for_one"
        assert (status.root.intensity, status.root.period_seconds) == (5, 10.0)


async def test_an_immediate_group_restart_supersedes_a_pending_delayed_one() -> None:
    """rest_for_one: b waits on backoff, then a's crash restarts [a, b] at once."""
    clock = ManualClock()
    journal = Journal()
    spec = SupervisorSpec(
        "root",
        [probe("a", journal), probe("b", journal)],
        strategy=Strategy.REST_FOR_ONE,
        intensity=10,
        backoff=Backoff(initial=1.0, jitter=0.0),
    )
    async with ActorSystem(spec, clock=clock) as system:
        await crash(system, "b")  # immediate restart
        await crash(system, "b")  # the next one waits 1 s
        await crash(system, "a")  # a's first crash: [a, b] restart now
        clock.advance(2.0)  # b's stale timer would fire here
        await system.wait_idle()
        starts = journal.of("start").count("b")
        stops = journal.of("stop").count("b")
        assert starts - stops == 1, "a second copy of b was started while one ran"
        assert incarnations(system)["b"] == starts
