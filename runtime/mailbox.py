"""Bounded mailboxes, the envelopes they carry, and dead-letter accounting.

A mailbox belongs to an actor's *cell*, not to one incarnation: it survives
restarts, so messages sent while an actor restarts are held (up to the
capacity) and delivered in order to the new incarnation. The message that was
being handled when the actor crashed is not redelivered: a message that crashes
an actor once would crash it again.

Full-mailbox policy (:class:`Overflow`):

* ``REJECT`` (default): the sender gets :class:`~runtime.errors.MailboxFull` at
  once. Intake turns this into HTTP 429, which is what a client can act on.
* ``BLOCK``: the sender waits up to ``block_timeout`` seconds for room, then
  gets ``MailboxFull``. For internal traffic that should apply back-pressure.

``tell_nowait`` never waits, whatever the policy. Rejected messages and
messages left undelivered when an actor stops for good are counted as dead
letters, by actor and reason.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

import anyio

from runtime.errors import ActorDied, ActorStopped, MailboxFull
from runtime.messages import Message


class Overflow(enum.StrEnum):
    """What a send does when the mailbox is full."""

    REJECT = "reject"
    BLOCK = "block"


@dataclass(frozen=True)
class MailboxConfig:
    """Capacity and overflow policy of one actor's mailbox."""

    capacity: int = 1024
    """Messages held at most, the one being handled not included."""
    overflow: Overflow = Overflow.REJECT
    block_timeout: float = 1.0
    """Seconds a ``BLOCK`` send waits for room before giving up."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        if self.block_timeout < 0:
            raise ValueError("block_timeout must not be negative")


class DeadReason(enum.StrEnum):
    """Why a message was not handled."""

    MAILBOX_FULL = "mailbox_full"
    STOPPED = "stopped"
    EXPIRED = "expired"
    """An ask whose caller had already given up when its turn came."""


@dataclass
class DeadLetters:
    """Counts of messages that were never handled, by (actor, reason)."""

    counts: Counter[tuple[str, DeadReason]] = field(default_factory=Counter)

    def record(self, actor: str, reason: DeadReason) -> None:
        """Count one dead letter."""
        self.counts[(actor, reason)] += 1

    def undelivered(self, actor: str) -> int:
        """Messages to ``actor`` refused at its mailbox (full, or the actor stopped)."""
        return (
            self.counts[(actor, DeadReason.MAILBOX_FULL)] + self.counts[(actor, DeadReason.STOPPED)]
        )

    def total(self, actor: str | None = None) -> int:
        """All dead letters, or those of one actor."""
        return sum(n for (who, _), n in self.counts.items() if actor is None or who == actor)


class Reply:
    """The single outcome of an ask: a value or an error, set exactly once."""

    __slots__ = ("_error", "_event", "_value", "abandoned")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Message | None = None
        self._error: BaseException | None = None
        self.abandoned = False
        """The caller stopped waiting (deadline or cancellation)."""

    @property
    def done(self) -> bool:
        """Whether an outcome has been set."""
        return self._event.is_set()

    def resolve(self, value: Message | None) -> None:
        """Answer the ask; later outcomes are ignored."""
        if not self.done:
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        """Fail the ask; later outcomes are ignored."""
        if not self.done:
            self._error = error
            self._event.set()

    async def wait(self) -> Message | None:
        """Wait for the outcome; raise it if it is an error."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(slots=True)
class Envelope:
    """A message in a mailbox, with where to send the answer if it is an ask."""

    message: Message
    reply: Reply | None = None


class Mailbox:
    """A bounded FIFO of envelopes on an anyio memory object stream."""

    def __init__(self, owner: str, config: MailboxConfig, dead_letters: DeadLetters) -> None:
        self.owner = owner
        self.config = config
        self._dead_letters = dead_letters
        self._send, self._receive = anyio.create_memory_object_stream[Envelope](config.capacity)
        self._closed = False

    def reopen(self) -> None:
        """Accept messages again after :meth:`close` (a stopped child started anew).

        OTP keeps a transient child that exited normally in its supervisor's
        list; a later group restart starts it again, with an empty mailbox.
        """
        if self._closed:
            self._send, self._receive = anyio.create_memory_object_stream[Envelope](
                self.config.capacity
            )
            self._closed = False

    @property
    def depth(self) -> int:
        """Messages waiting to be handled."""
        return self._receive.statistics().current_buffer_used

    @property
    def closed(self) -> bool:
        """Whether the mailbox refuses new messages for good."""
        return self._closed

    def put_nowait(self, envelope: Envelope) -> None:
        """Enqueue without waiting; raise ``MailboxFull`` or ``ActorStopped``."""
        try:
            self._send.send_nowait(envelope)
        except anyio.WouldBlock:
            raise self._full() from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._stopped() from None

    async def put(self, envelope: Envelope) -> None:
        """Enqueue following the overflow policy."""
        try:
            self._send.send_nowait(envelope)
        except anyio.WouldBlock:
            if self.config.overflow is Overflow.REJECT:
                raise self._full() from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._stopped() from None
        else:
            # The fast path needs no timeout scope: a scope per send halved tell
            # throughput in benchmarks/runtime_bench.py.
            await anyio.lowlevel.checkpoint()
            return
        await self._put_waiting(envelope)

    async def _put_waiting(self, envelope: Envelope) -> None:
        try:
            with anyio.move_on_after(self.config.block_timeout):
                await self._send.send(envelope)
                return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._stopped() from None
        raise self._full()

    def _full(self) -> MailboxFull:
        self._dead_letters.record(self.owner, DeadReason.MAILBOX_FULL)
        return MailboxFull(self.owner, self.config.capacity)

    def _stopped(self) -> ActorStopped:
        self._dead_letters.record(self.owner, DeadReason.STOPPED)
        return ActorStopped(self.owner)

    async def get(self) -> Envelope:
        """Wait for the next envelope."""
        return await self._receive.receive()

    def expire(self, envelope: Envelope) -> None:
        """Count an envelope skipped because its asker gave up."""
        self._dead_letters.record(self.owner, DeadReason.EXPIRED)

    def close(self, reason: str) -> None:
        """Refuse new messages and fail or count every queued one.

        Queued asks fail with ``ActorDied`` at once, so no caller waits out its
        deadline on an actor that will never answer.
        """
        self._closed = True
        self._send.close()
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            self._dead_letters.record(self.owner, DeadReason.STOPPED)
            if envelope.reply is not None:
                envelope.reply.fail(ActorDied(self.owner, reason))
        # Closing the receiving end also wakes senders blocked on a full mailbox.
        self._receive.close()
