"""What a supervisor knows about each of its children, worker or supervisor.

A :class:`Node` is the long-lived place of one child in the tree. It outlives
its incarnations: its path, its mailbox (for workers) and its restart
bookkeeping stay, while each start runs a fresh actor or supervisor loop.
The supervisor alone decides state transitions; a node reports exits through
the ``on_exit`` callback it is started with.
"""

from __future__ import annotations

import enum
import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

from runtime.clock import Clock
from runtime.events import EventBus
from runtime.inbox import Inboxes
from runtime.lifecycle import Event
from runtime.mailbox import DeadLetters
from runtime.spec import Restart
from runtime.status import ActorStatus, Failure, NodeState, SupervisorStatus

if TYPE_CHECKING:
    from runtime.actor import ActorCell

log = logging.getLogger("troupe.runtime")


class ExitKind(enum.StrEnum):
    """How an incarnation ended."""

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    CRASH = "crash"
    ABANDONED = "abandoned"
    """It ignored its shutdown timeout; its task may still be running."""


@dataclass(frozen=True)
class ExitInfo:
    """An incarnation's end: its kind and a sanitized reason."""

    kind: ExitKind
    reason: str

    @property
    def crashed(self) -> bool:
        """Whether this counts as abnormal for restart decisions."""
        return self.kind is ExitKind.CRASH


@dataclass(frozen=True)
class StartFailure:
    """A child that failed to start, named by its full path (the innermost one)."""

    path: str
    reason: str


OnExit = Callable[[int, ExitInfo], None]
"""Called once, synchronously, when a started incarnation ends: (incarnation, exit)."""


@dataclass
class Services:
    """What every node of one actor system shares."""

    clock: Clock
    rng: random.Random
    events: EventBus[Event]
    dead_letters: DeadLetters
    task_group: TaskGroup | None = None
    """The system-wide task group that hosts every incarnation and timer."""
    cells: dict[str, ActorCell] = field(default_factory=dict)
    """Worker cells by id, for lookups."""
    inboxes: Inboxes = field(default_factory=Inboxes)
    """Inboxes opened by code outside the tree, by name."""

    def spawn_group(self) -> TaskGroup:
        """The task group to run tasks in; the system must be running."""
        if self.task_group is None:
            raise RuntimeError("the actor system is not running")
        return self.task_group


class Node(ABC):
    """One child's place in the tree, with the bookkeeping its supervisor needs."""

    def __init__(self, ident: str, path: str, restart: Restart, services: Services) -> None:
        self.id = ident
        self.path = path
        self.restart = restart
        self.services = services
        self.state = NodeState.STOPPED
        self.incarnation = 0
        """Number of the latest incarnation started (1 for the first)."""
        self.active: int | None = None
        """Incarnation the supervisor considers running; exits of others are stale."""
        self.restarts_total = 0
        self.restart_times: deque[float] = deque()
        self.consecutive_failures = 0
        self.started_at: float | None = None
        self.last_failure: Failure | None = None
        self.exiting = False
        """Set the moment the running incarnation ends on its own, cleared when the
        supervisor has taken note: until then its supervisor is not idle."""

    @abstractmethod
    async def start(self, on_exit: OnExit) -> StartFailure | None:
        """Start a new incarnation; return why it failed, or ``None`` once it runs."""

    @abstractmethod
    async def stop(self) -> ExitInfo:
        """Stop the running incarnation within the shutdown timeout."""

    @abstractmethod
    def close(self, reason: str) -> None:
        """Refuse messages for good and fail what is queued (recursively)."""

    @abstractmethod
    def status(self, period: float) -> ActorStatus | SupervisorStatus:
        """A snapshot; ``period`` is the parent's window for restart counts."""

    def mark_running(self, incarnation: int) -> None:
        """Record that ``incarnation`` started."""
        self.active = incarnation
        self.state = NodeState.RUNNING
        self.started_at = self.services.clock.monotonic()

    def mark_exited(self, exit_info: ExitInfo) -> None:
        """Record an exit the supervisor has taken note of."""
        self.active = None
        self.exiting = False
        self.started_at = None
        self.state = (
            NodeState.ABANDONED if exit_info.kind is ExitKind.ABANDONED else (NodeState.STOPPED)
        )
        if exit_info.crashed:
            self.last_failure = Failure(reason=exit_info.reason, at=self.services.clock.wall())

    def note_failure(self, reset_after: float) -> int:
        """Count a consecutive failure and return the count (for backoff)."""
        now = self.services.clock.monotonic()
        if self.started_at is not None and now - self.started_at >= reset_after:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        return self.consecutive_failures

    def note_restart(self) -> None:
        """Count a restart of this node."""
        self.restarts_total += 1
        self.restart_times.append(self.services.clock.monotonic())

    def restarts_in_window(self, period: float) -> int:
        """Restarts within the last ``period`` seconds (OTP counts the boundary in)."""
        threshold = self.services.clock.monotonic() - period
        while self.restart_times and self.restart_times[0] < threshold:
            self.restart_times.popleft()
        return len(self.restart_times)

    def uptime(self) -> float | None:
        """Seconds since the running incarnation started, or ``None``."""
        if self.started_at is None:
            return None
        return max(0.0, self.services.clock.monotonic() - self.started_at)
