"""Per-request result streams, found by key.

Actors answer a streaming request by pushing events to a bounded stream that
the requester opened under the request's id. Messages carry only the key, so
they stay plain data; the registry is the in-process transport behind it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


class DuplicateStream(KeyError):
    """A stream with this key is already open."""


class StreamRegistry(Generic[T]):
    """Open result streams by key; the consumer owns the receiving end."""

    def __init__(self) -> None:
        self._senders: dict[str, MemoryObjectSendStream[T]] = {}

    def open(self, key: str, capacity: int) -> MemoryObjectReceiveStream[T]:
        """Open a stream that buffers up to ``capacity`` events."""
        if key in self._senders:
            raise DuplicateStream(key)
        send, receive = anyio.create_memory_object_stream[T](capacity)
        self._senders[key] = send
        return receive

    def offer(self, key: str, event: T) -> bool:
        """Deliver without waiting; ``False`` if the stream is gone, closed or full."""
        sender = self._senders.get(key)
        if sender is None:
            return False
        try:
            sender.send_nowait(event)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def finish(self, key: str) -> None:
        """Close the producing end: the consumer's iteration ends after the buffer."""
        sender = self._senders.pop(key, None)
        if sender is not None:
            sender.close()

    def __contains__(self, key: object) -> bool:
        return key in self._senders

    def __len__(self) -> int:
        return len(self._senders)
