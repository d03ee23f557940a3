"""The plumbing of the stateful supervisor test: its workers, and a machine that runs them.

:class:`SupervisorHarness` starts a flat supervisor of :class:`Worker` actors
in a blocking portal's event loop (one per example, on the backend under
test), turns every ask and tell into exactly one :class:`Outcome`, says which
outcome the model predicts, and after every step waits for the tree to settle
(``system.wait_idle()``) and compares its status with the
:class:`~tests.supervisor_model.SupervisorModel`. The rules live in the test
module. Time is a :class:`~runtime.ManualClock` and restarts have no backoff,
so nothing here sleeps.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant

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
from tests.supervisor_model import ChildModel, ExitHow, SupervisorModel

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


# -- the state machine ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The one outcome of an ask or a tell: ``answer``, ``ok`` or an error's class name."""

    kind: str
    answer: Message | None = None


class SupervisorHarness(RuleBasedStateMachine):
    """A live flat supervisor and its model; subclasses add the rules that drive them."""

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
