"""Actors, their references, and the cell that runs their incarnations.

An :class:`Actor` handles one message at a time. It is reached only through an
:class:`ActorRef`: ``tell`` sends and forgets, ``ask`` sends and waits for the
single outcome until a deadline. The :class:`ActorCell` is the actor's durable
place in the tree: it owns the mailbox and starts a fresh actor object for
every incarnation.

Outcomes an asker can see, exactly one per ask:

* the handler's return value;
* :class:`~runtime.errors.ActorDied` when the actor exits (crash, normal exit
  or shutdown) while the ask is being handled, or is queued when it stops for
  good;
* :class:`~runtime.errors.AskTimeout` when the deadline passes first;
* :class:`~runtime.errors.MailboxFull` or :class:`~runtime.errors.ActorStopped`
  when it could not be enqueued.

An exception escaping ``handle`` (or a task started with
:meth:`ActorContext.start_soon`) crashes the incarnation, and its supervisor
decides what happens next. Asks whose caller has already given up are skipped
when their turn comes and counted as dead letters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar, TypeVarTuple, overload

import anyio

from runtime.context import ActorContext
from runtime.errors import (
    ActorDied,
    AskTimeout,
    ExitActor,
    UnexpectedReply,
    describe_failure,
)
from runtime.mailbox import Envelope, Mailbox, Reply
from runtime.messages import Message
from runtime.node import ExitInfo, ExitKind, Node, OnExit, Services, StartFailure, log
from runtime.slowdown import SlowDown, Slowdown
from runtime.spec import ChildSpec
from runtime.status import ActorStatus, NodeState

R = TypeVar("R", bound=Message)
Ts = TypeVarTuple("Ts")

DEFAULT_ASK_TIMEOUT = 30.0
"""Seconds an ask waits when the caller names no deadline."""


class ActorRef:
    """The only handle other code has on an actor; stays valid across restarts."""

    __slots__ = ("_cell",)

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        """The actor's id."""
        return self._cell.id

    @property
    def path(self) -> str:
        """The actor's place in the tree."""
        return self._cell.path

    async def tell(self, message: Message) -> None:
        """Send without waiting for an answer, following the mailbox's overflow policy."""
        await self._cell.mailbox.put(Envelope(_checked(message)))

    def tell_nowait(self, message: Message) -> None:
        """Send without waiting at all; raise ``MailboxFull`` if there is no room."""
        self._cell.mailbox.put_nowait(Envelope(_checked(message)))

    @overload
    async def ask(self, message: Message, *, timeout: float = ..., expect: type[R]) -> R: ...

    @overload
    async def ask(self, message: Message, *, timeout: float = ...) -> Message | None: ...

    async def ask(
        self,
        message: Message,
        *,
        timeout: float = DEFAULT_ASK_TIMEOUT,
        expect: type[Message] | None = None,
    ) -> Message | None:
        """Send and wait for the answer until ``timeout`` seconds have passed.

        The deadline covers waiting for mailbox room (under the ``BLOCK`` policy)
        as well as the handling. With ``expect``, an answer of another type
        raises :class:`~runtime.errors.UnexpectedReply`.
        """
        reply = Reply()
        envelope = Envelope(_checked(message), reply)
        try:
            with anyio.move_on_after(timeout):
                await self._cell.mailbox.put(envelope)
                answer = await reply.wait()
                if expect is not None and not isinstance(answer, expect):
                    raise UnexpectedReply(self.name, expect, answer)
                return answer
        finally:
            reply.abandoned = True
        raise AskTimeout(self.name, timeout)

    def __repr__(self) -> str:
        return f"ActorRef({self.path!r})"


def _checked(message: Message) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"actors exchange Message structs, not {type(message).__name__}")
    return message


class Actor:
    """Base class of every actor. Override :meth:`handle`; the hooks are optional."""

    _context: ActorContext | None = None

    @property
    def ctx(self) -> ActorContext:
        """This incarnation's context (available from :meth:`on_start` on)."""
        if self._context is None:
            raise RuntimeError("the actor has not been started")
        return self._context

    async def on_start(self) -> None:
        """Prepare the incarnation; raising here is a start failure."""

    async def handle(self, message: Message) -> Message | None:
        """Handle one message; the return value answers an ask."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(message).__name__}")

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Release resources; runs shielded within the shutdown timeout."""


@dataclass(eq=False)
class _Incarnation:
    """State that belongs to one run of an actor, never to the cell."""

    number: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)
    started: anyio.Event = field(default_factory=anyio.Event)
    start_failure: StartFailure | None = None
    inflight: Envelope | None = None
    exit: ExitInfo = field(default_factory=lambda: ExitInfo(ExitKind.SHUTDOWN, "stopped"))
    deferred: set[Reply] = field(default_factory=set)
    """Asks whose answers were deferred and are not given yet."""

    def fail_inflight(self, actor: str, reason: str) -> None:
        """Tell the asker of the message being handled, and deferred askers, that it died."""
        envelope, self.inflight = self.inflight, None
        if envelope is not None and envelope.reply is not None:
            envelope.reply.fail(ActorDied(actor, reason))
        pending, self.deferred = list(self.deferred), set()
        for reply in pending:
            reply.fail(ActorDied(actor, reason))


class ActorCell(Node):
    """A worker's durable place in the tree: spec, mailbox, reference, incarnations."""

    def __init__(self, spec: ChildSpec, path: str, services: Services) -> None:
        super().__init__(spec.id, path, spec.restart, services)
        self.spec = spec
        self.mailbox = Mailbox(spec.id, spec.mailbox, services.dead_letters)
        self.ref = ActorRef(self)
        self._current: _Incarnation | None = None
        self.slowdown = Slowdown()
        """Delays injected by :class:`~runtime.slowdown.SlowDown`; they outlive incarnations."""

    async def start(self, on_exit: OnExit) -> StartFailure | None:
        """Start a fresh actor and wait until its ``on_start`` has returned."""
        self.incarnation += 1
        self.mailbox.reopen()
        incarnation = _Incarnation(self.incarnation)
        self._current = incarnation
        self.state = NodeState.STARTING
        self.services.spawn_group().start_soon(
            self._run, incarnation, on_exit, name=f"actor {self.path}"
        )
        await incarnation.started.wait()
        if incarnation.start_failure is not None:
            self._current = None
            self.state = NodeState.FAILED
            return incarnation.start_failure
        self.mark_running(incarnation.number)
        return None

    @property
    def current(self) -> _Incarnation | None:
        """The incarnation running now, if any."""
        return self._current

    async def stop(self) -> ExitInfo:
        """Cancel the running incarnation; abandon it after the shutdown timeout."""
        incarnation, self._current = self._current, None
        if incarnation is None or incarnation.finished.is_set():
            return incarnation.exit if incarnation else ExitInfo(ExitKind.SHUTDOWN, "not running")
        self.state = NodeState.STOPPING
        incarnation.scope.cancel()
        limit = math.inf if self.spec.shutdown is None else self.spec.shutdown
        with anyio.move_on_after(limit):
            await incarnation.finished.wait()
        if incarnation.finished.is_set():
            return incarnation.exit
        reason = f"ignored shutdown for {limit:g}s"
        log.warning("actor %s %s; abandoned", self.path, reason)
        incarnation.fail_inflight(self.id, f"abandoned: {reason}")
        return ExitInfo(ExitKind.ABANDONED, reason)

    def close(self, reason: str) -> None:
        """Refuse messages for good; queued asks fail at once."""
        if not self.mailbox.closed:
            self.mailbox.close(reason)

    def status(self, period: float) -> ActorStatus:
        """A snapshot of this actor."""
        return ActorStatus(
            name=self.id,
            path=self.path,
            state=self.state,
            restart=self.restart.value,
            incarnation=self.incarnation,
            restarts_in_window=self.restarts_in_window(period),
            restarts_total=self.restarts_total,
            last_failure=self.last_failure,
            mailbox_depth=self.mailbox.depth,
            mailbox_capacity=self.mailbox.config.capacity,
            dead_letters=self.services.dead_letters.total(self.id),
            uptime_seconds=self.uptime(),
        )

    async def _run(self, incarnation: _Incarnation, on_exit: OnExit) -> None:
        """One incarnation, from construction to cleanup; never raises a crash upward."""
        actor: Actor | None = None
        try:
            with incarnation.scope:
                try:
                    actor = self.spec.factory()
                    incarnation.exit = await self._serve(actor, incarnation)
                except BaseException as exc:
                    cause = _crash_cause(exc)
                    incarnation.exit = ExitInfo(ExitKind.CRASH, describe_failure(cause))
                    self._note_exiting(incarnation)
                    incarnation.fail_inflight(self.id, incarnation.exit.reason)
        finally:
            await self._finish(actor, incarnation, on_exit)

    async def _serve(self, actor: Actor, incarnation: _Incarnation) -> ExitInfo:
        async with anyio.create_task_group() as tasks:
            actor._context = ActorContext(self, tasks)
            await actor.on_start()
            incarnation.started.set()
            exit_info = await self._message_loop(actor, incarnation)
            tasks.cancel_scope.cancel()
        return exit_info

    async def _message_loop(self, actor: Actor, incarnation: _Incarnation) -> ExitInfo:
        while True:
            envelope = await self.mailbox.get()
            reply = envelope.reply
            if reply is not None and reply.abandoned:
                self.mailbox.expire(envelope)
                continue
            if isinstance(envelope.message, SlowDown):
                answered = self.slowdown.set(envelope.message)
                if reply is not None:
                    reply.resolve(answered)
                continue
            incarnation.inflight = envelope  # a stop during the delay fails it, never loses it
            await self.slowdown.wait(self.services.clock)
            try:
                answer = await actor.handle(envelope.message)
            except ExitActor as request:
                kind = ExitKind(request.reason)
                self._note_exiting(incarnation)
                incarnation.fail_inflight(self.id, f"exited ({kind.value})")
                return ExitInfo(kind, f"exited ({kind.value})")
            incarnation.inflight = None
            if reply is not None and envelope.reply is not None:  # not deferred
                reply.resolve(answer)

    def _note_exiting(self, incarnation: _Incarnation) -> None:
        # Before anyone is told of the exit, so that a caller who saw the actor
        # die finds its supervisor busy until the exit has been handled.
        if self._current is incarnation and incarnation.started.is_set():
            self.exiting = True

    async def _finish(
        self, actor: Actor | None, incarnation: _Incarnation, on_exit: OnExit
    ) -> None:
        exit_info = incarnation.exit
        incarnation.fail_inflight(self.id, exit_info.reason)
        if not incarnation.started.is_set():
            # A failed start is reported to the starter, not as an exit; OTP
            # does not call terminate after a failed init either.
            incarnation.start_failure = StartFailure(self.path, exit_info.reason)
            incarnation.started.set()
        else:
            await self._cleanup(actor, exit_info)
            on_exit(incarnation.number, exit_info)
        incarnation.finished.set()

    async def _cleanup(self, actor: Actor | None, exit_info: ExitInfo) -> None:
        if actor is None:
            return
        with anyio.CancelScope(shield=True) as scope:
            if self.spec.shutdown is not None:
                scope.deadline = anyio.current_time() + self.spec.shutdown
            try:
                await actor.on_stop(exit_info.kind)
            except Exception as exc:
                # A crash in cleanup must not stop the rest of the tree from stopping.
                log.warning("actor %s: on_stop failed: %s", self.path, describe_failure(exc))


def _crash_cause(exc: BaseException) -> BaseException:
    """The error that crashed an incarnation; re-raise cancellation and interpreter exits."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, cancelled | KeyboardInterrupt | SystemExit):
        raise exc
    if isinstance(exc, BaseExceptionGroup):
        for leaf in _leaves(exc):
            if not isinstance(leaf, cancelled):
                return _crash_cause(leaf)
        raise exc
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
