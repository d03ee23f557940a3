"""The two sides of the runtime benchmark: the actor runtime and its raw baseline.

The runtime side is an :class:`~runtime.ActorSystem` with an echo actor (for
asks) and a counting actor (for tells), both on ``BLOCK``-policy mailboxes.
The raw side does the same by hand with anyio memory object streams: an echo
task that answers ``(request, reply stream)`` pairs and a counting task. Both
are reached through a :class:`Target`, so every measure runs the same code
against either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime import (
    Actor,
    ActorRef,
    ActorSystem,
    ChildSpec,
    MailboxConfig,
    Message,
    Overflow,
    SupervisorSpec,
)

MAILBOX_CAPACITY = 1024
"""Capacity of both actors' mailboxes and of the baseline's request streams."""
ASK_TIMEOUT = 10.0
"""Deadline of every ask: far beyond any round trip, so it never fires."""


class BenchPing(Message, frozen=True):
    """A request; the echo actor answers it with a :class:`BenchPong` of the same ``n``."""

    n: int = 0


class BenchPong(Message, frozen=True):
    """The echo actor's answer."""

    n: int = 0


AskFn = Callable[[BenchPing], Awaitable[BenchPong]]
"""One caller's way to make a round trip."""
RawRequest = tuple[BenchPing, MemoryObjectSendStream[BenchPong]]
"""What the baseline's echo task reads: a request and where to answer it."""


class Tally:
    """Counts handled messages and sets :attr:`done` once the target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = anyio.Event()

    def arm(self, target: int) -> None:
        """Start counting again towards ``target`` (with a fresh event)."""
        self.count = 0
        self.target = target
        self.done = anyio.Event()

    def hit(self) -> None:
        """Count one message."""
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Echo(Actor):
    """Answers every :class:`BenchPing` with a :class:`BenchPong`."""

    async def handle(self, message: Message) -> Message | None:
        """Echo the request's number back."""
        assert isinstance(message, BenchPing)
        return BenchPong(n=message.n)


class Counter(Actor):
    """Counts the messages it is told into a shared :class:`Tally`."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    async def handle(self, message: Message) -> Message | None:
        """Count the message; answer nothing."""
        self._tally.hit()
        return None


@dataclass(frozen=True)
class Target:
    """One side of the comparison: how to ask, how to tell, and what counts tells."""

    client: Callable[[], AbstractContextManager[AskFn]]
    """Opens one caller (each concurrent caller opens its own)."""
    tell: Callable[[BenchPing], Awaitable[None]]
    tally: Tally


@contextmanager
def _actor_client(ref: ActorRef) -> Iterator[AskFn]:
    async def ask(message: BenchPing) -> BenchPong:
        return await ref.ask(message, timeout=ASK_TIMEOUT, expect=BenchPong)

    yield ask


@contextmanager
def _raw_client(requests: MemoryObjectSendStream[RawRequest]) -> Iterator[AskFn]:
    reply_send, reply_receive = anyio.create_memory_object_stream[BenchPong](1)
    with reply_send, reply_receive:

        async def ask(message: BenchPing) -> BenchPong:
            await requests.send((message, reply_send))
            return await reply_receive.receive()

        yield ask


async def _raw_echo(requests: MemoryObjectReceiveStream[RawRequest]) -> None:
    """The baseline's echo: answer each request on its own reply stream."""
    with requests:
        async for message, reply in requests:
            reply.send_nowait(BenchPong(n=message.n))


async def _raw_counter(items: MemoryObjectReceiveStream[BenchPing], tally: Tally) -> None:
    """The baseline's counter: count each item received."""
    with items:
        async for _ in items:
            tally.hit()


def _system_spec(tally: Tally) -> SupervisorSpec:
    mailbox = MailboxConfig(capacity=MAILBOX_CAPACITY, overflow=Overflow.BLOCK)
    return SupervisorSpec(
        "root",
        [
            ChildSpec("echo", Echo, mailbox=mailbox),
            ChildSpec("counter", partial(Counter, tally), mailbox=mailbox),
        ],
    )


@asynccontextmanager
async def open_sides() -> AsyncIterator[tuple[Target, Target]]:
    """Start the runtime's actors and the baseline's tasks; yield ``(runtime, raw)``."""
    runtime_tally, raw_tally = Tally(), Tally()
    requests, request_inbox = anyio.create_memory_object_stream[RawRequest](MAILBOX_CAPACITY)
    items, item_inbox = anyio.create_memory_object_stream[BenchPing](MAILBOX_CAPACITY)
    async with (
        ActorSystem(_system_spec(runtime_tally)) as system,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_raw_echo, request_inbox)
        tasks.start_soon(_raw_counter, item_inbox, raw_tally)
        # Closing the baseline's send ends stop its tasks, so the group can exit.
        with requests, items:
            echo, counter = system.ref("echo"), system.ref("counter")
            runtime = Target(partial(_actor_client, echo), counter.tell, runtime_tally)
            raw = Target(partial(_raw_client, requests), items.send, raw_tally)
            yield runtime, raw
