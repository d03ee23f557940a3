"""A stateful property test of one flat supervisor against a pure model of OTP semantics.

Hypothesis drives random sequences of asks, crashes, exits, tells, stalls and
clock advances, alone or racing each other, against a running
:class:`~runtime.ActorSystem`; after every step the harness
(:mod:`tests.supervisor_machine`) compares the tree's status with the model of
what OTP's ``supervisor`` would have done (:mod:`tests.supervisor_model`).
Every rule is one ``portal.call``; time is a manual clock, so no rule sleeps.
"""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from runtime import (
    NO_BACKOFF,
    Actor,
    ActorSystem,
    ChildSpec,
    DeliveryError,
    ManualClock,
    Message,
    NodeState,
    Restart,
    Strategy,
    SupervisorEscalated,
    SupervisorSpec,
)
from tests.supervisor_machine import (
    SETTLE_TIMEOUT,
    Outcome,
    Probe,
    SmCrash,
    SmExit,
    SmNote,
    SmPing,
    SmPong,
    SmStall,
    SupervisorHarness,
    Worker,
)
from tests.supervisor_model import ChildModel, ExitHow


class SupervisorMachine(SupervisorHarness):
    """Random steps against a live flat supervisor, checked against the model."""

    # -- rules ---------------------------------------------------------------------

    @rule(index=st.integers(0, 3))
    def ping(self, index: int) -> None:
        child = self.pick(index)
        outcome = self.ask(child.name, SmPing(), self.timeout_for(child))
        self.expect_pong(outcome, child)

    @rule()
    def ping_all_at_once(self) -> None:
        """Concurrent asks: each gets exactly one outcome, as predicted."""
        children = list(self.model.children)
        results: dict[str, Outcome] = {}

        async def one(child: ChildModel) -> None:
            results[child.name] = await self._ask(child.name, SmPing(), self.timeout_for(child))

        async def run() -> None:
            with anyio.fail_after(SETTLE_TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    for child in children:
                        tasks.start_soon(one, child)

        self.portal.call(run)
        assert sorted(results) == sorted(c.name for c in children)
        for child in children:
            self.expect_pong(results[child.name], child)

    @rule(index=st.integers(0, 3), how=st.sampled_from(["crash", "normal", "shutdown"]))
    def stop_one(self, index: int, how: ExitHow) -> None:
        """Crash an actor (an ask of a crash), or make it exit normally or with shutdown."""
        child = self.pick(index)
        message = SmCrash() if how == "crash" else SmExit(reason=how)
        outcome = self.ask(child.name, message, self.timeout_for(child))
        self.expect_exit(outcome, child, how)

    @rule(index=st.integers(0, 3), past=st.booleans())
    def crash_at_the_window_edge(self, index: int, past: bool) -> None:
        """Crash one just as the oldest counted restart is exactly ``period`` old (or older)."""
        self.advance_clock_to_the_window_edge(past)
        self.stop_one(index, "crash")

    @rule(index=st.integers(0, 3))
    def crash_with_a_ping_queued(self, index: int) -> None:
        """A told crash, then a ping queued behind it: the mailbox outlives the incarnation."""
        child = self.pick(index)
        if child.stalled:
            return  # the crash would happen whenever the clock lets it: not this rule's business

        async def run() -> tuple[Outcome, Outcome]:
            with anyio.fail_after(SETTLE_TIMEOUT):
                told = self._tell(child.name, SmCrash())
                asked = await self._ask(child.name, SmPing(), self.timeout_for(child))
                return told, asked

        told, asked = self.portal.call(run)
        if self.model.escalated or not child.alive:
            assert (told.kind, asked.kind) == ("ActorStopped", "ActorStopped"), (child, told, asked)
            return
        assert told.kind == "ok", (child, told)
        self.model.exited(child.name, "crash")
        if self.stopped_for_good(child):
            # Still queued when the actor stopped for good: failed at once.
            assert asked.kind == "ActorDied", (child, asked)
        else:
            self.expect_pong(asked, child)

    @rule(
        index=st.integers(0, 3),
        pings=st.lists(st.integers(0, 3), min_size=1, max_size=4),
        notes=st.lists(st.integers(0, 3), max_size=3),
        crash_after=st.integers(0, 3),
    )
    def crash_amid_concurrent_sends(
        self, index: int, pings: list[int], notes: list[int], crash_after: int
    ) -> None:
        """Asks and tells race an asked crash of the same child, all in one task group.

        Each number is how many scheduling rounds a sender lets pass first, so
        sends land before the crash, while the child restarts or stops, and
        after it.
        """
        child = self.pick(index)
        if child.stalled:
            return  # the crash would wait for the clock: not this rule's business
        was_running = not self.stopped_for_good(child)
        timeout = self.timeout_for(child)
        before = (child.incarnation, child.notes)
        pongs: list[Outcome] = []
        told: list[Outcome] = []
        crashed: list[Outcome] = []

        async def send(rounds: int, message: Message, into: list[Outcome]) -> None:
            for _ in range(rounds):
                await anyio.lowlevel.checkpoint()
            if isinstance(message, SmNote):
                into.append(self._tell(child.name, message))
            else:
                into.append(await self._ask(child.name, message, timeout))

        async def run() -> None:
            with anyio.fail_after(SETTLE_TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(send, crash_after, SmCrash(), crashed)
                    for rounds in pings:
                        tasks.start_soon(send, rounds, SmPing(), pongs)
                    for rounds in notes:
                        tasks.start_soon(send, rounds, SmNote(), told)

        self.portal.call(run)
        # Exactly one outcome per send (the invariant also counts every ask).
        assert (len(crashed), len(pongs), len(told)) == (1, len(pings), len(notes))
        if not was_running:
            refused = {o.kind for o in crashed + pongs + told}
            assert refused == {"ActorStopped"}, (child, crashed, pongs, told)
            return
        assert crashed[0].kind == "ActorDied", (child, crashed)
        self.model.exited(child.name, "crash")
        self.expect_raced(child, before, pongs, told)

    def expect_raced(
        self, child: ChildModel, before: tuple[int, int], pongs: list[Outcome], told: list[Outcome]
    ) -> None:
        """The sends that raced a crash, once the model has followed the crash."""
        incarnation, notes = before
        kept = not self.stopped_for_good(child)
        # A restarted child keeps its mailbox: every send is delivered. One
        # stopped for good answers what was ahead of the crash, fails what was
        # queued behind it (ActorDied) and refuses what came later.
        allowed = {"answer"} if kept else {"answer", "ActorDied", "ActorStopped"}
        incarnations = {incarnation, child.incarnation} if kept else {incarnation}
        for outcome in pongs:
            assert outcome.kind in allowed, (child, outcome)
            if outcome.kind != "answer":
                event(f"raced crash: a ping got {outcome.kind}")
                continue
            assert isinstance(outcome.answer, SmPong), (child, outcome)
            assert outcome.answer.name == child.name
            assert outcome.answer.incarnation in incarnations, (child, before, outcome)
            assert notes <= outcome.answer.notes <= notes + len(told), (child, before, outcome)
            if outcome.answer.incarnation != incarnation:
                event("raced crash: a ping answered by the next incarnation")
        assert {o.kind for o in told} <= ({"ok"} if kept else {"ok", "ActorStopped"}), told
        if kept:
            child.notes += len(told)  # all handled before any later ping

    @rule(index=st.integers(0, 3), count=st.integers(1, 3))
    def tell_notes(self, index: int, count: int) -> None:
        child = self.pick(index)

        def run() -> list[Outcome]:
            return [self._tell(child.name, SmNote()) for _ in range(count)]

        outcomes = self.portal.call(run)
        if self.model.escalated or not child.alive:
            assert {o.kind for o in outcomes} == {"ActorStopped"}, (child, outcomes)
        else:
            assert {o.kind for o in outcomes} == {"ok"}, (child, outcomes)
            child.notes += count

    @rule(index=st.integers(0, 3), seconds=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    def stall(self, index: int, seconds: float) -> None:
        """Make an actor wait for the manual clock; asks to it time out meanwhile."""
        child = self.pick(index)
        if child.stalled:
            return
        until = self.model.now + seconds

        async def run() -> Outcome:
            with anyio.fail_after(SETTLE_TIMEOUT):
                stalling = anyio.Event()
                self.probe.stalling[child.name] = stalling
                told = self._tell(child.name, SmStall(until=until))
                if told.kind == "ok":
                    await stalling.wait()
                else:
                    del self.probe.stalling[child.name]
                return told

        told = self.portal.call(run)
        if self.model.escalated or not child.alive:
            assert told.kind == "ActorStopped", (child, told)
        else:
            assert told.kind == "ok", (child, told)
            child.stalled_until = until

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.5, 5.0]))
    def advance_clock(self, seconds: float) -> None:
        self.portal.call(self.clock.advance, seconds)
        self.model.advance(seconds)

    @rule(past=st.booleans())
    def advance_clock_to_the_window_edge(self, past: bool) -> None:
        """Make the oldest logged restart exactly ``period`` old (or just older)."""
        model = self.model
        window = [t for t in model.restart_log if t >= model.now - model.period]
        if not window:
            return
        seconds = window[0] + model.period - model.now + (0.5 if past else 0.0)
        self.advance_clock(seconds)


STEPS = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    # A failing step may wait out an ask's deadline; keep shrinking to one bug
    # and skip the explain phase, which replays the failure many more times.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


@pytest.mark.timeout(120)  # a pass takes seconds; shrinking a failure takes longer
@pytest.mark.parametrize("strategy", list(Strategy))
def test_supervisor_follows_the_otp_model(anyio_backend: str, strategy: Strategy) -> None:
    class Machine(SupervisorMachine):
        def __init__(self) -> None:
            super().__init__(anyio_backend, strategy)

    run_state_machine_as_test(Machine, settings=STEPS)


# -- what the machine found, pinned down ----------------------------------------------


class _Gate(Message, frozen=True, kw_only=True):
    """Makes a GatedCrasher wait for its gate, then crash."""


class GatedCrasher(Actor):
    """Crashes on any message once ``gate`` is set."""

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    async def handle(self, message: Message) -> Message | None:
        await self.gate.wait()
        raise RuntimeError("crash requested by the test")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_group_restart_revives_a_transient_that_exited_normally(
    strategy: Strategy,
) -> None:
    # OTP (supervisor.erl): a transient child that exits normally stays in the
    # child list without a process (del_child sets pid = undefined), and
    # restart_multiple_children starts every non-temporary child of the group,
    # so it runs again after a sibling's crash.
    probe = Probe()
    spec = SupervisorSpec(
        "root",
        [
            ChildSpec("w0", lambda: Worker("w0", probe)),
            ChildSpec("w1", lambda: Worker("w1", probe), restart=Restart.TRANSIENT),
        ],
        strategy=strategy,
        intensity=3,
        period=5.0,
        backoff=NO_BACKOFF,
    )
    async with ActorSystem(spec, clock=ManualClock(), rng=random.Random(0)) as system:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError):
                await system.ref("w1").ask(SmExit(reason="normal"))
            await system.wait_idle()
            with pytest.raises(DeliveryError):
                await system.ref("w0").ask(SmCrash())
            await system.wait_idle()
            assert system.running
            answer = await system.ref("w1").ask(SmPing())
            assert answer == SmPong(name="w1", incarnation=2, notes=0)
            w1 = system.status().root.children[1]
            assert (w1.state, w1.incarnation, w1.restarts_total) == (NodeState.RUNNING, 2, 1)


@pytest.mark.timeout(10)
async def test_wait_idle_returns_after_an_escalation_with_exits_still_queued() -> None:
    # Two children crash in the same scheduling round; the first exit escalates
    # (intensity 0) and the second is still queued when the control loop ends.
    gate = anyio.Event()
    spec = SupervisorSpec(
        "root",
        [ChildSpec("a", lambda: GatedCrasher(gate)), ChildSpec("b", lambda: GatedCrasher(gate))],
        intensity=0,
        backoff=NO_BACKOFF,
    )
    system = ActorSystem(spec, clock=ManualClock(), rng=random.Random(0))
    with pytest.raises(SupervisorEscalated):
        async with system:
            system.ref("a").tell_nowait(_Gate())
            system.ref("b").tell_nowait(_Gate())
            await anyio.wait_all_tasks_blocked()
            gate.set()  # both crash in the same scheduling round
            await system.wait()
    with anyio.fail_after(1):
        await system.wait_idle()
