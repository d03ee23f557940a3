"""The actor system: the root supervisor, its task group, and what callers use.

Use it as an async context manager::

    async with ActorSystem(SupervisorSpec("root", [ChildSpec("echo", Echo)])) as system:
        answer = await system.ref("echo").ask(Ping(), timeout=1.0)

Entering starts the tree (or raises :class:`~runtime.errors.ChildStartError`
naming the child that failed). Leaving stops it in reverse order. If the root
supervisor escalates, the system stops by itself: every mailbox is closed so
callers fail at once, :meth:`ActorSystem.wait` raises
:class:`~runtime.errors.SupervisorEscalated`, and so does leaving the block.

Every incarnation, supervisor loop and restart timer runs in the system's one
task group. An actor that ignores cancellation past its shutdown timeout is
abandoned by its supervisor, which goes on without it; Python cannot kill a
task, so leaving the ``async with`` block still waits for it to return.
"""

from __future__ import annotations

import random
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from runtime.actor import ActorRef
from runtime.clock import Clock, SystemClock
from runtime.errors import ChildStartError, SupervisorEscalated
from runtime.events import EventBus, Subscription
from runtime.inbox import Inbox
from runtime.lifecycle import Event
from runtime.mailbox import DeadLetters
from runtime.node import ExitInfo, Services
from runtime.spec import SupervisorSpec
from runtime.status import SystemStatus
from runtime.supervisor import Supervisor


class ActorSystem:
    """A running supervision tree."""

    def __init__(
        self,
        root: SupervisorSpec,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        events: EventBus[Event] | None = None,
    ) -> None:
        """Prepare (not start) a system around ``root``.

        ``events`` lets the composition root create the lifecycle bus first, so
        that actors of the tree (a metrics actor) can subscribe as they start.
        """
        self.spec = root
        self.services = Services(
            clock=clock or SystemClock(),
            rng=rng or random.Random(),
            events=events or EventBus[Event](),
            dead_letters=DeadLetters(),
        )
        self._root: Supervisor | None = None
        self._task_group: TaskGroup | None = None
        self._stopped: anyio.Event | None = None
        self.failure: SupervisorEscalated | None = None

    @property
    def root(self) -> Supervisor:
        """The root supervisor (the system must have been entered)."""
        if self._root is None:
            raise RuntimeError("the actor system has not been started")
        return self._root

    @property
    def running(self) -> bool:
        """Whether the tree is up (not stopped, not escalated)."""
        return self._stopped is not None and not self._stopped.is_set()

    async def __aenter__(self) -> ActorSystem:
        self._stopped = anyio.Event()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self.services.task_group = self._task_group
        try:
            self._root = Supervisor(self.spec, self.spec.id, self.services)
            failure = await self._root.start(self._on_root_exit)
        except BaseException:
            await self._abort()
            raise
        if failure is not None:
            await self._abort()
            raise ChildStartError(failure.path, failure.reason)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.stop()
        self.services.events.close()
        assert self._task_group is not None
        # The tree is stopped; what is left are abandoned tasks, if any. The
        # body's own exception is not fed to the task group, so it propagates
        # as itself rather than wrapped in an exception group.
        await self._task_group.__aexit__(None, None, None)
        if exc_type is None and self.failure is not None:
            raise self.failure
        return None

    async def stop(self) -> None:
        """Stop the tree in reverse start order, each actor within its shutdown timeout."""
        if self._root is not None and self.running:
            await self._root.stop()
        await self._stopped_event().wait()

    async def wait(self) -> None:
        """Wait until the system stops; raise ``SupervisorEscalated`` if its root gave up."""
        await self._stopped_event().wait()
        if self.failure is not None:
            raise self.failure

    def ref(self, actor_id: str) -> ActorRef:
        """The reference of a worker actor, by id."""
        cell = self.services.cells.get(actor_id)
        if cell is None:
            raise LookupError(f"no actor with id {actor_id!r}")
        return cell.ref

    def open_inbox(self, name: str, capacity: int) -> Inbox:
        """An inbox under ``name`` that actors can post up to ``capacity`` unread messages to.

        For code outside the tree that expects a stream of replies (see
        :mod:`runtime.inbox`); close it when done. ``InboxInUse`` if the name is taken.
        """
        return self.services.inboxes.open(name, capacity)

    def subscribe(self, capacity: int = 256) -> Subscription[Event]:
        """Lifecycle events from now on; a slow subscriber loses events, never stalls the tree."""
        return self.services.events.subscribe(capacity)

    def status(self) -> SystemStatus:
        """A snapshot of the whole tree."""
        bus = self.services.events.statistics()
        return SystemStatus(
            at=self.services.clock.wall(),
            root=self.root.status(self.spec.period),
            dead_letters=self.services.dead_letters.total(),
            events_published=bus.published,
            events_dropped=bus.dropped,
            failure=None if self.failure is None else str(self.failure),
        )

    async def wait_idle(self) -> None:
        """Wait until every supervisor has handled every exit and due restart."""
        while True:
            supervisors = self.root.supervisors()
            for supervisor in supervisors:
                await supervisor.wait_idle()
            if self.root.exiting:  # the root escalated: idle once the system has stopped
                await self._stopped_event().wait()
                return
            if not any(s._busy() for s in self.root.supervisors()):
                return

    def _on_root_exit(self, incarnation: int, exit_info: ExitInfo) -> None:
        if exit_info.crashed:
            self.failure = SupervisorEscalated(self.spec.id, exit_info.reason)
        self.root.close("the actor system stopped")
        self._stopped_event().set()

    def _stopped_event(self) -> anyio.Event:
        if self._stopped is None:
            raise RuntimeError("the actor system has not been started")
        return self._stopped

    async def _abort(self) -> None:
        """Leave the task group after a failed start."""
        if self._root is not None:
            self._root.close("the actor system failed to start")
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
