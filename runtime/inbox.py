"""Inboxes: addresses that code outside the tree opens to receive actors' messages.

In OTP an actor answers a stream of results by sending messages to the
caller's pid. Code outside the supervision tree (an HTTP handler) has no pid;
an inbox gives it an address: the caller opens an inbox under a name through
the system (:meth:`ActorSystem.open_inbox`), names it in its request, and
actors post to that name (:meth:`ActorContext.post`). So a result stream
travels as messages through the system, like every other exchange, and
neither side holds an object of the other.

Like a mailbox, an inbox is bounded and carries only message Structs. Unlike a
mailbox, no actor drains it and posting never waits: a post to an inbox that
is full, closed or unknown returns ``False``, and the poster decides what that
means (the generation actor cancels the request: its reader is gone).
"""

from __future__ import annotations

from types import TracebackType

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.messages import Message


class InboxInUse(KeyError):
    """An inbox with this name is already open."""


class Inbox:
    """The receiving end of one inbox; closing it (or leaving its block) frees the name."""

    def __init__(
        self, name: str, receive: MemoryObjectReceiveStream[Message], directory: Inboxes
    ) -> None:
        self.name = name
        self._receive = receive
        self._directory = directory

    async def receive(self) -> Message:
        """The next message; ``anyio.EndOfStream`` once the senders sealed it and it is empty."""
        return await self._receive.receive()

    def receive_nowait(self) -> Message:
        """The next message if one is waiting (``anyio.WouldBlock`` if none)."""
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop receiving; later posts to the name return ``False``."""
        self._directory.discard(self.name, self)
        self._receive.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Inboxes:
    """The inboxes of one actor system, by name (event-loop only, like mailboxes)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Inbox, MemoryObjectSendStream[Message]]] = {}

    def open(self, name: str, capacity: int) -> Inbox:
        """Open an inbox that buffers up to ``capacity`` messages."""
        if name in self._open:
            raise InboxInUse(name)
        send, receive = anyio.create_memory_object_stream[Message](max(capacity, 1))
        inbox = Inbox(name, receive, self)
        self._open[name] = (inbox, send)
        return inbox

    def post(self, name: str, message: Message) -> bool:
        """Deliver without waiting; ``False`` if the inbox is unknown, closed or full."""
        if not isinstance(message, Message):
            raise TypeError(f"inboxes carry Message structs, not {type(message).__name__}")
        entry = self._open.get(name)
        if entry is None:
            return False
        try:
            entry[1].send_nowait(message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def seal(self, name: str) -> None:
        """No more messages to ``name``: its reader ends after what is buffered."""
        entry = self._open.pop(name, None)
        if entry is not None:
            entry[1].close()

    def discard(self, name: str, inbox: Inbox) -> None:
        """Forget ``inbox`` (called by :meth:`Inbox.close`; a newer one of that name stays)."""
        entry = self._open.get(name)
        if entry is not None and entry[0] is inbox:
            del self._open[name]
            entry[1].close()

    def __contains__(self, name: object) -> bool:
        return name in self._open

    def __len__(self) -> int:
        return len(self._open)
