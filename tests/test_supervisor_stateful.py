"""A stateful property test of one flat supervisor against a pure model of OTP semantics.

Hypothesis drives random sequences of asks, crashes, exits, tells, stalls and
clock advances against a running :class:`~runtime.ActorSystem` and, after every
step, waits for the tree to settle (``system.wait_idle()``) and compares its
status with :class:`SupervisorModel`, a few lines of plain Python that say what
OTP's ``supervisor`` would have done:

* a permanent child is restarted after any exit, a transient one only after a
  crash, a temporary one never;
* ``one_for_one`` restarts the child that exited, ``one_for_all`` every child,
  ``rest_for_one`` that child and those started after it; temporary siblings
  caught in a group restart are removed instead;
* every restart decision (a group restart counts once) is logged; restarts at
  most ``period`` seconds old count (the boundary is included) and
  ``intensity + 1`` of them make the supervisor escalate, which stops the
  system for good.

The system runs in a blocking portal's event loop (one per example, on the
backend under test); every rule is one ``portal.call``. Time is a
:class:`~runtime.ManualClock` and restarts have no backoff, so no rule sleeps.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from runtime import (
    NO_BACKOFF,
    Actor,
    ActorStatus,
    ActorSystem,
    AskTimeout,
    ChildSpec,
    DeliveryError,
    ExitActor,
    ManualClock,
    Message,
    NodeState,
    Restart,
    Strategy,
    SupervisorEscalated,
    SupervisorSpec,
    SystemStatus,
)

ExitHow = Literal["crash", "normal", "shutdown"]

ANSWER_TIMEOUT = 2.0
"""Seconds an ask that the model expects to be answered (or refused) may take; never reached."""
REFUSED_TIMEOUT = 0.5
"""Seconds an ask to an actor stopped for good may take: it must be refused at once."""
STALLED_TIMEOUT = 0.001
"""Seconds an ask to a stalled actor waits: it cannot be answered before the clock moves."""
SETTLE_TIMEOUT = 5.0
"""Seconds a portal call may take before the test calls the runtime stuck."""
NAMES = ("w0", "w1", "w2", "w3")


# -- the actors ------------------------------------------------------------------


class SmPing(Message, frozen=True, kw_only=True):
    """Answered with an SmPong."""


class SmPong(Message, frozen=True, kw_only=True):
    """Which incarnation answered, and how many notes the actor has handled in all."""

    name: str
    incarnation: int
    notes: int


class SmNote(Message, frozen=True, kw_only=True):
    """Counted by the actor (across incarnations: the mailbox survives restarts)."""


class SmCrash(Message, frozen=True, kw_only=True):
    """Makes the handler raise."""


class SmExit(Message, frozen=True, kw_only=True):
    """Makes the handler end the incarnation with ``ExitActor(reason)``."""

    reason: str


class SmStall(Message, frozen=True, kw_only=True):
    """Makes the handler wait until the manual clock reaches ``until``."""

    until: float


@dataclass
class Probe:
    """What the workers of one example share with the test (touched in the loop thread only)."""

    starts: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    stalling: dict[str, anyio.Event] = field(default_factory=dict)


class Worker(Actor):
    """A worker that obeys the messages above and reports its incarnation."""

    def __init__(self, name: str, probe: Probe) -> None:
        self.name = name
        self.probe = probe
        probe.starts[name] += 1
        self.incarnation = probe.starts[name]

    async def handle(self, message: Message) -> Message | None:
        match message:
            case SmPing():
                return SmPong(
                    name=self.name, incarnation=self.incarnation, notes=self.probe.notes[self.name]
                )
            case SmNote():
                self.probe.notes[self.name] += 1
                return None
            case SmCrash():
                raise RuntimeError("crash requested by the test")
            case SmExit(reason=reason):
                raise ExitActor(reason)
            case SmStall(until=until):
                stalling = self.probe.stalling.pop(self.name, None)
                if stalling is not None:
                    stalling.set()
                await self.ctx.clock.sleep_until(until)
                return None
        raise AssertionError(f"unexpected message {message!r}")


# -- the model ---------------------------------------------------------------------


def wants_restart(restart: Restart, how: ExitHow) -> bool:
    """OTP: permanent always, transient after an abnormal exit, temporary never."""
    if restart is Restart.PERMANENT:
        return True
    return restart is Restart.TRANSIENT and how == "crash"


@dataclass
class ChildModel:
    """What OTP says about one worker."""

    name: str
    restart: Restart
    alive: bool = True
    """Running; otherwise its mailbox is closed and sends fail with ``ActorStopped``."""
    incarnation: int = 1
    restarts_total: int = 0
    restart_times: list[float] = field(default_factory=list)
    notes: int = 0
    """Notes accepted by its mailbox; all of them are handled before a later ping."""
    crashed: bool = False
    stalled_until: float | None = None
    """The clock time its running incarnation waits for; asks queue behind it."""

    @property
    def stalled(self) -> bool:
        """Whether the running incarnation is stuck in a stall."""
        return self.alive and self.stalled_until is not None


@dataclass
class SupervisorModel:
    """A flat OTP supervisor with no backoff, as plain data."""

    strategy: Strategy
    intensity: int
    period: float
    children: list[ChildModel]
    now: float
    restart_log: list[float] = field(default_factory=list)
    escalated: bool = False

    def child(self, name: str) -> ChildModel:
        """The child called ``name``."""
        return next(c for c in self.children if c.name == name)

    def advance(self, seconds: float) -> None:
        """Move time on; stalls that are due end."""
        self.now += seconds
        for child in self.children:
            if child.stalled_until is not None and child.stalled_until <= self.now:
                child.stalled_until = None

    def group(self, child: ChildModel) -> list[ChildModel]:
        """The children the strategy restarts when ``child`` exits, in start order."""
        match self.strategy:
            case Strategy.ONE_FOR_ONE:
                return [child]
            case Strategy.ONE_FOR_ALL:
                return list(self.children)
            case Strategy.REST_FOR_ONE:
                return self.children[self.children.index(child) :]

    def window_after_one_more(self) -> list[float]:
        """OTP's add_restart: the restarts at most ``period`` old, plus one now."""
        threshold = self.now - self.period
        return [t for t in self.restart_log if t >= threshold] + [self.now]

    def exited(self, name: str, how: ExitHow) -> None:
        """The running child ``name`` exited on its own."""
        child = self.child(name)
        child.alive = False
        child.stalled_until = None
        child.crashed = child.crashed or how == "crash"
        if not wants_restart(child.restart, how):
            return
        before = len(self.restart_log)
        self.restart_log = self.window_after_one_more()
        on_boundary = self.restart_log.count(self.now - self.period)
        if len(self.restart_log) <= before:
            event("model: the intensity window slid")
        if on_boundary:
            event("model: a restart exactly `period` old still counts")
        if len(self.restart_log) > self.intensity:
            if len(self.restart_log) - on_boundary <= self.intensity:
                event("model: the window's boundary decides an escalation")
            self.escalated = True
            for other in self.children:
                other.alive = False
                other.stalled_until = None
            return
        for member in self.group(child):
            member.stalled_until = None
            if member is not child and member.restart is Restart.TEMPORARY:
                if member.alive:
                    event("model: a group restart removes a temporary sibling")
                member.alive = False  # terminated and removed, never restarted
                continue
            # OTP keeps a transient child that exited normally in its child
            # list (with no process); a group restart starts it again.
            if member is not child and not member.alive:
                event("model: a group restart revives a stopped transient")
            member.alive = True
            member.incarnation += 1
            member.restarts_total += 1
            member.restart_times.append(self.now)

    def restarts_in_window(self, child: ChildModel) -> int:
        """Restarts of ``child`` at most ``period`` seconds old."""
        return sum(1 for t in child.restart_times if t >= self.now - self.period)


# -- the state machine ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The one outcome of an ask or a tell: ``answer``, ``ok`` or an error's class name."""

    kind: str
    answer: Message | None = None


class SupervisorMachine(RuleBasedStateMachine):
    """Random steps against a live flat supervisor, checked against the model."""

    def __init__(self, backend: str, strategy: Strategy) -> None:
        super().__init__()
        self.backend = backend
        self.strategy = strategy
        self.asks_issued = 0
        self.outcomes = 0
        self.history: Counter[tuple[str, str]] = Counter()
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._system_cm: contextlib.AbstractContextManager[ActorSystem] | None = None
        self._portal: BlockingPortal | None = None
        self._system: ActorSystem | None = None
        self._model: SupervisorModel | None = None
        self.clock = ManualClock()
        self.probe = Probe()

    # -- plumbing -----------------------------------------------------------

    @property
    def portal(self) -> BlockingPortal:
        assert self._portal is not None
        return self._portal

    @property
    def system(self) -> ActorSystem:
        assert self._system is not None
        return self._system

    @property
    def model(self) -> SupervisorModel:
        assert self._model is not None
        return self._model

    def pick(self, index: int) -> ChildModel:
        return self.model.children[index % len(self.model.children)]

    async def _ask(self, name: str, message: Message, timeout: float) -> Outcome:
        """Ask and turn whatever happens into exactly one outcome."""
        self.asks_issued += 1
        try:
            answer = await self.system.ref(name).ask(message, timeout=timeout)
        except (DeliveryError, AskTimeout) as error:
            outcome = Outcome(type(error).__name__)
        else:
            outcome = Outcome("answer", answer)
        self.outcomes += 1
        self.history[(type(message).__name__, outcome.kind)] += 1
        return outcome

    def _tell(self, name: str, message: Message) -> Outcome:
        """Send without waiting (runs in the loop thread)."""
        try:
            self.system.ref(name).tell_nowait(message)
        except DeliveryError as error:
            return Outcome(type(error).__name__)
        return Outcome("ok")

    def ask(self, name: str, message: Message, timeout: float) -> Outcome:
        """One ask, from the test thread."""

        async def run() -> Outcome:
            with anyio.fail_after(SETTLE_TIMEOUT):
                return await self._ask(name, message, timeout)

        return self.portal.call(run)

    def stopped_for_good(self, child: ChildModel) -> bool:
        """Whether the model says ``child`` refuses messages from now on."""
        return self.model.escalated or not child.alive

    def timeout_for(self, child: ChildModel) -> float:
        if self.stopped_for_good(child):
            return REFUSED_TIMEOUT
        return STALLED_TIMEOUT if child.stalled else ANSWER_TIMEOUT

    def expect_pong(self, outcome: Outcome, child: ChildModel) -> None:
        """A ping's outcome as the model predicts it."""
        if self.model.escalated or not child.alive:
            # Stopped for good: refused at once, never left to time out.
            assert outcome.kind == "ActorStopped", (child.name, outcome)
        elif child.stalled:
            assert outcome.kind == "AskTimeout", (child.name, outcome)
        else:
            assert outcome.answer == SmPong(
                name=child.name, incarnation=child.incarnation, notes=child.notes
            ), (child, outcome)

    def expect_exit(self, outcome: Outcome, child: ChildModel, how: ExitHow) -> None:
        """A crash or exit request's outcome; the model follows the exit."""
        if self.model.escalated or not child.alive:
            assert outcome.kind == "ActorStopped", (child.name, outcome)
        elif child.stalled:
            # Still queued behind the stall when the asker gave up: it is skipped later.
            assert outcome.kind == "AskTimeout", (child.name, outcome)
        else:
            assert outcome.kind == "ActorDied", (child.name, how, outcome)
            self.model.exited(child.name, how)

    # -- setup and teardown ------------------------------------------------------

    @initialize(
        restarts=st.lists(st.sampled_from(list(Restart)), min_size=3, max_size=4),
        intensity=st.sampled_from([1, 2, 3, 0, 5]),
        period=st.sampled_from([1.0, 2.0, 3.5]),
    )
    def start(self, restarts: list[Restart], intensity: int, period: float) -> None:
        names = NAMES[: len(restarts)]
        spec = SupervisorSpec(
            "root",
            [
                ChildSpec(name, self._factory(name), restart=restart)
                for name, restart in zip(names, restarts, strict=True)
            ],
            strategy=self.strategy,
            intensity=intensity,
            period=period,
            backoff=NO_BACKOFF,
        )
        self._model = SupervisorModel(
            strategy=self.strategy,
            intensity=intensity,
            period=period,
            children=[ChildModel(n, r) for n, r in zip(names, restarts, strict=True)],
            now=self.clock.monotonic(),
        )
        self._portal_cm = start_blocking_portal(self.backend)
        self._portal = self._portal_cm.__enter__()
        system = ActorSystem(spec, clock=self.clock, rng=random.Random(0))
        self._system_cm = self.portal.wrap_async_context_manager(system)
        self._system = self._system_cm.__enter__()

    def _factory(self, name: str) -> Callable[[], Actor]:
        probe = self.probe
        return lambda: Worker(name, probe)

    def teardown(self) -> None:
        escalated_on_exit = False
        failed = False
        try:
            if self._system_cm is not None:
                failed = self._system is not None and self._system.failure is not None
                try:
                    self._system_cm.__exit__(None, None, None)
                except SupervisorEscalated:
                    escalated_on_exit = True
        finally:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)
        # Compared with the runtime's own record (the steps compared that with
        # the model), so that a failed step is not reported twice.
        assert escalated_on_exit is failed, "leaving the block must raise the escalation"
        if self._model is not None:
            event(f"escalated: {self.model.escalated}")
            for (message, outcome), _ in self.history.items():
                event(f"{message} -> {outcome}")

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

    # -- the check after every step -------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        async def settle() -> tuple[SystemStatus, bool, bool]:
            with anyio.fail_after(SETTLE_TIMEOUT):
                await self.system.wait_idle()
            return self.system.status(), self.system.running, self.system.failure is not None

        status, running, failed = self.portal.call(settle)
        model = self.model
        assert self.outcomes == self.asks_issued
        assert running is not model.escalated
        assert failed is model.escalated
        assert (status.failure is not None) is model.escalated
        root = status.root
        assert root.state is (NodeState.FAILED if model.escalated else NodeState.RUNNING)
        assert root.strategy == model.strategy.value
        assert [c.name for c in root.children] == [c.name for c in model.children]
        for child, seen in zip(model.children, root.children, strict=True):
            assert isinstance(seen, ActorStatus)
            expected = {
                "state": NodeState.RUNNING if child.alive else NodeState.STOPPED,
                "restart": child.restart.value,
                "incarnation": child.incarnation,
                "restarts_total": child.restarts_total,
                "restarts_in_window": model.restarts_in_window(child),
                "crashed": child.crashed,
            }
            actual = {
                "state": seen.state,
                "restart": seen.restart,
                "incarnation": seen.incarnation,
                "restarts_total": seen.restarts_total,
                "restarts_in_window": seen.restarts_in_window,
                "crashed": seen.last_failure is not None,
            }
            assert actual == expected, (child.name, model)
            assert self.probe.starts[child.name] == child.incarnation


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
