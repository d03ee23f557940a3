"""Inboxes: the addresses outside code opens so that actors can post a stream of replies."""

from __future__ import annotations

import anyio
import pytest

from runtime import (
    NO_BACKOFF,
    Actor,
    ActorSystem,
    ChildSpec,
    Inboxes,
    InboxInUse,
    Message,
    SupervisorSpec,
)
from tests.support import Ping

pytestmark = pytest.mark.timeout(20)


class Stream(Message, frozen=True, kw_only=True):
    """Ask the streamer to post ``count`` pings to ``inbox``, then seal it."""

    inbox: str
    count: int


class Posted(Message, frozen=True, kw_only=True):
    open: bool
    delivered: list[bool]


class Streamer(Actor):
    async def handle(self, message: Message) -> Message | None:
        assert isinstance(message, Stream)
        was_open = self.ctx.inbox_open(message.inbox)
        delivered = [self.ctx.post(message.inbox, Ping(n=n)) for n in range(message.count)]
        self.ctx.seal(message.inbox)
        return Posted(open=was_open, delivered=delivered)


def streamer_tree() -> SupervisorSpec:
    return SupervisorSpec("root", [ChildSpec("streamer", Streamer)], backoff=NO_BACKOFF)


async def test_an_actor_posts_to_an_inbox_that_outside_code_opened() -> None:
    async with ActorSystem(streamer_tree()) as system:
        with system.open_inbox("req-1", 8) as inbox:
            answer = await system.ref("streamer").ask(Stream(inbox="req-1", count=3), timeout=5)
            assert answer == Posted(open=True, delivered=[True, True, True])
            received = [await inbox.receive() for _ in range(3)]
            assert received == [Ping(n=0), Ping(n=1), Ping(n=2)]
            with pytest.raises(anyio.EndOfStream):
                await inbox.receive()  # sealed: the reader ends after the buffer


async def test_posts_to_an_unknown_closed_or_full_inbox_return_false() -> None:
    async with ActorSystem(streamer_tree()) as system:
        ref = system.ref("streamer")
        assert await ref.ask(Stream(inbox="nobody", count=1), timeout=5) == Posted(
            open=False, delivered=[False]
        )
        with system.open_inbox("small", 2):
            full = await ref.ask(Stream(inbox="small", count=3), timeout=5)
            assert full == Posted(open=True, delivered=[True, True, False])
        closed = await ref.ask(Stream(inbox="small", count=1), timeout=5)
        assert closed == Posted(open=False, delivered=[False])


def test_a_name_is_one_inbox_until_its_reader_closes_it() -> None:
    inboxes = Inboxes()
    first = inboxes.open("a", 4)
    with pytest.raises(InboxInUse):
        inboxes.open("a", 4)
    inboxes.seal("a")  # the sender's end: the name is free for a new request
    second = inboxes.open("a", 4)
    first.close()  # a stale reader's close leaves the newer inbox alone
    assert "a" in inboxes and inboxes.post("a", Ping(n=1))
    assert second.receive_nowait() == Ping(n=1)
    second.close()
    assert "a" not in inboxes and len(inboxes) == 0


def test_an_inbox_carries_only_messages() -> None:
    inboxes = Inboxes()
    with inboxes.open("a", 1), pytest.raises(TypeError, match="Message structs"):
        inboxes.post("a", {"not": "a message"})  # type: ignore[arg-type]
