"""A publish/subscribe bus whose publisher never waits.

The supervisor publishes lifecycle events from its control loop; a slow or
stuck subscriber must never delay a restart. Each subscriber therefore gets
its own bounded buffer, and an event that does not fit is dropped for that
subscriber and counted, in the bus's statistics and in the subscription's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


@dataclass(frozen=True)
class BusStatistics:
    """Counters of an :class:`EventBus`."""

    subscribers: int
    published: int
    dropped: int


class Subscription(Generic[T]):
    """One subscriber's bounded view of the bus; iterate it, then ``aclose()`` it."""

    def __init__(self, bus: EventBus[T], capacity: int) -> None:
        send, receive = anyio.create_memory_object_stream[T](capacity)
        self._bus = bus
        self._send: MemoryObjectSendStream[T] = send
        self._receive: MemoryObjectReceiveStream[T] = receive
        self.dropped = 0

    def offer(self, event: T) -> bool:
        """Buffer ``event`` if there is room; never waits."""
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def receive(self) -> T:
        """Wait for the next event; raises ``anyio.EndOfStream`` once closed."""
        return await self._receive.receive()

    def receive_nowait(self) -> T:
        """Return a buffered event or raise ``anyio.WouldBlock``."""
        return self._receive.receive_nowait()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._receive.__aiter__()

    async def aclose(self) -> None:
        """Unsubscribe and release the buffer."""
        self._bus.unsubscribe(self)
        self._send.close()
        await self._receive.aclose()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class EventBus(Generic[T]):
    """Fan-out of events to any number of bounded subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription[T]] = []
        self._published = 0
        self._dropped = 0

    def subscribe(self, capacity: int = 256) -> Subscription[T]:
        """Add a subscriber that buffers up to ``capacity`` events."""
        if capacity < 1:
            raise ValueError("a subscription needs room for at least one event")
        subscription = Subscription(self, capacity)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[T]) -> None:
        """Remove a subscriber; unknown ones are ignored."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish_nowait(self, event: T) -> None:
        """Offer ``event`` to every subscriber, dropping it where there is no room."""
        self._published += 1
        for subscription in self._subscriptions:
            if not subscription.offer(event):
                self._dropped += 1

    def close(self) -> None:
        """End every subscription's stream (receivers see ``EndOfStream``)."""
        for subscription in self._subscriptions:
            subscription._send.close()

    def statistics(self) -> BusStatistics:
        """Return the bus's counters."""
        return BusStatistics(len(self._subscriptions), self._published, self._dropped)
