"""What an actor reaches through ``self.ctx``: itself, its peers, inboxes, its tasks.

One :class:`ActorContext` is made for each incarnation by its
:class:`~runtime.actor.ActorCell`; it lasts as long as that incarnation.
:class:`DeferredReply` is the handle of an ask answered after its handler
returned (OTP's ``gen_server`` ``noreply`` and ``gen_server:reply/2``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVarTuple

import anyio.abc

from runtime.clock import Clock
from runtime.mailbox import Reply
from runtime.messages import Message

if TYPE_CHECKING:
    from runtime.actor import ActorCell, ActorRef

Ts = TypeVarTuple("Ts")


class ActorContext:
    """What an actor can reach: itself, its peers, the clock and its own tasks."""

    def __init__(self, cell: ActorCell, task_group: anyio.abc.TaskGroup) -> None:
        self._cell = cell
        self._task_group = task_group

    @property
    def ref(self) -> ActorRef:
        """This actor's own reference."""
        return self._cell.ref

    @property
    def path(self) -> str:
        """This actor's place in the tree."""
        return self._cell.path

    @property
    def clock(self) -> Clock:
        """The system's clock."""
        return self._cell.services.clock

    def lookup(self, actor_id: str) -> ActorRef:
        """Another actor of the same system, by id."""
        cell = self._cell.services.cells.get(actor_id)
        if cell is None:
            raise LookupError(f"no actor with id {actor_id!r}")
        return cell.ref

    def post(self, inbox: str, message: Message) -> bool:
        """Put ``message`` in the inbox named ``inbox``, without waiting.

        ``False`` if no such inbox is open or it is full: its reader is gone or
        too slow, and the caller decides what that means.
        """
        return self._cell.services.inboxes.post(inbox, message)

    def seal(self, inbox: str) -> None:
        """Say that no more messages go to ``inbox``: its reader ends after the buffered ones."""
        self._cell.services.inboxes.seal(inbox)

    def inbox_open(self, inbox: str) -> bool:
        """Whether an inbox of that name is open (a requester expects replies there)."""
        return inbox in self._cell.services.inboxes

    def undelivered(self) -> int:
        """Messages to this actor refused so far because its mailbox was full or it was stopped.

        Counted by the runtime for the actor's place in the tree, so the count
        spans incarnations; for an actor that reports what it never received.
        """
        return self._cell.services.dead_letters.undelivered(self._cell.mailbox.owner)

    def defer_reply(self) -> DeferredReply:
        """Answer the ask being handled later, from another task (gen_server's ``noreply``).

        ``handle`` returns at once (its return value is then ignored) and the
        mailbox moves on; the answer goes through the returned handle. If the
        incarnation ends first, the asker gets :class:`~runtime.errors.ActorDied`.
        For an actor that relays asks to a slower peer without stalling its
        other messages. Raises ``RuntimeError`` outside an ask's handling.
        """
        incarnation = self._cell.current
        envelope = None if incarnation is None else incarnation.inflight
        if incarnation is None or envelope is None or envelope.reply is None:
            raise RuntimeError("defer_reply() needs an ask being handled")
        reply, envelope.reply = envelope.reply, None
        incarnation.deferred.add(reply)
        return DeferredReply(reply, incarnation.deferred)

    def start_soon(
        self, func: Callable[[*Ts], Coroutine[Any, Any, Any]], *args: *Ts, name: str = ""
    ) -> None:
        """Run a task for the life of this incarnation; if it raises, the actor crashes."""
        self._task_group.start_soon(func, *args, name=name or f"{self.path}:task")


class DeferredReply:
    """An ask's answer, given after its handler returned (:meth:`ActorContext.defer_reply`)."""

    __slots__ = ("_pending", "_reply")

    def __init__(self, reply: Reply, pending: set[Reply]) -> None:
        self._reply = reply
        self._pending = pending

    @property
    def abandoned(self) -> bool:
        """The asker stopped waiting."""
        return self._reply.abandoned

    def resolve(self, value: Message | None) -> None:
        """Answer the ask (later outcomes are ignored)."""
        self._pending.discard(self._reply)
        self._reply.resolve(value)

    def fail(self, error: BaseException) -> None:
        """Fail the ask with ``error``."""
        self._pending.discard(self._reply)
        self._reply.fail(error)
