"""Frames between processes (runtime.wire) and deferred replies (ActorContext.defer_reply)."""

from __future__ import annotations

import socket
import threading

import anyio
import pytest

from runtime import Actor, ActorDied, ActorSystem, ChildSpec, Message, SupervisorSpec
from runtime.context import DeferredReply
from runtime.wire import HEADER, MAX_FRAME, BlockingChannel, FrameDecoder, FrameError, frame

pytestmark = pytest.mark.timeout(30)


class Ping(Message, frozen=True, kw_only=True):
    text: str
    numbers: list[int]


class Pong(Message, frozen=True, kw_only=True):
    text: str


def test_frames_cross_a_socket_whole_and_in_order() -> None:
    left, right = socket.socketpair()
    sender: BlockingChannel[Ping | Pong] = BlockingChannel(left, Ping | Pong)
    receiver: BlockingChannel[Ping | Pong] = BlockingChannel(right, Ping | Pong)
    sent = [Ping(text="x" * n, numbers=list(range(n))) for n in range(0, 5000, 500)]

    # Two threads sending at once never interleave their frames.
    def send_all() -> None:
        for message in sent:
            sender.send(message)

    threads = [threading.Thread(target=send_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    got = [receiver.receive() for _ in range(2 * len(sent))]
    for thread in threads:
        thread.join()
    assert sorted(got, key=repr) == sorted(sent * 2, key=repr)
    sender.close()
    assert receiver.receive() is None  # the peer's end of file
    receiver.close()


def test_a_frame_cut_short_is_end_of_file_and_garbage_is_an_error() -> None:
    left, right = socket.socketpair()
    receiver: BlockingChannel[Ping] = BlockingChannel(right, Ping)
    whole = frame(Pong(text="hello"))
    left.sendall(whole[:-2])  # a peer that died mid-write
    left.close()
    assert receiver.receive() is None
    with pytest.raises(FrameError):
        FrameDecoder(Ping).decode(whole[HEADER.size :])  # a Pong is not a Ping
    with pytest.raises(FrameError):
        FrameDecoder(Ping).decode(b"\xc1")  # not msgpack
    huge = HEADER.pack(MAX_FRAME + 1)
    left2, right2 = socket.socketpair()
    left2.sendall(huge)
    with pytest.raises(FrameError):
        BlockingChannel(right2, Ping).receive()
    for sock in (left2, right2):
        sock.close()
    receiver.close()


class Relay(Actor):
    """Defers each ask and answers it from another task once released."""

    def __init__(self, release: anyio.Event, pending: list[DeferredReply]) -> None:
        self.release = release
        self.pending = pending

    async def handle(self, message: Message) -> Message | None:
        match message:
            case Ping(text="crash"):
                raise RuntimeError("crash requested")
            case Ping(text=text):
                reply = self.ctx.defer_reply()
                self.pending.append(reply)
                self.ctx.start_soon(self.answer_later, reply, text)
            case Pong():
                return Pong(text="direct")
        return None

    async def answer_later(self, reply: DeferredReply, text: str) -> None:
        await self.release.wait()
        reply.resolve(Pong(text=text.upper()))


async def test_a_deferred_reply_answers_later_and_the_mailbox_moves_on() -> None:
    release = anyio.Event()
    pending: list[DeferredReply] = []
    spec = SupervisorSpec("root", [ChildSpec("relay", lambda: Relay(release, pending))])
    async with ActorSystem(spec) as system:
        relay = system.ref("relay")
        async with anyio.create_task_group() as tg:
            answers: list[Message | None] = []

            async def ask() -> None:
                answers.append(await relay.ask(Ping(text="later", numbers=[]), timeout=10))

            tg.start_soon(ask)
            # The first ask is held, yet the actor answers the next message at once.
            assert await relay.ask(Pong(text="now"), timeout=10) == Pong(text="direct")
            release.set()
        assert answers == [Pong(text="LATER")]


async def test_deferred_askers_hear_of_the_actors_death() -> None:
    pending: list[DeferredReply] = []
    spec = SupervisorSpec("root", [ChildSpec("relay", lambda: Relay(anyio.Event(), pending))])
    async with ActorSystem(spec) as system:
        relay = system.ref("relay")
        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def ask() -> None:
                try:
                    await relay.ask(Ping(text="held", numbers=[]), timeout=10)
                except ActorDied as exc:
                    outcome.append(exc)

            tg.start_soon(ask)
            while not pending:  # noqa: ASYNC110 - until the ask is deferred
                await anyio.sleep(0.01)
            with pytest.raises(ActorDied):
                await relay.ask(Ping(text="crash", numbers=[]), timeout=10)
        assert len(outcome) == 1


async def test_defer_reply_outside_an_ask_is_refused() -> None:
    refused: list[bool] = []

    class Teller(Actor):
        async def handle(self, message: Message) -> Message | None:
            if isinstance(message, Ping):  # told: there is no asker to answer later
                try:
                    self.ctx.defer_reply()
                except RuntimeError:
                    refused.append(True)
            return None

    spec = SupervisorSpec("root", [ChildSpec("teller", Teller)])
    async with ActorSystem(spec) as system:
        await system.ref("teller").tell(Ping(text="x", numbers=[]))
        await system.ref("teller").ask(Pong(text="after"), timeout=5)  # handled after the tell
    assert refused == [True]
