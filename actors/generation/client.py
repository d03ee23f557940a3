"""How other code asks the generation actor for a stream of tokens."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from actors.generation.protocol import (
    Accepted,
    Cancel,
    Failed,
    Finished,
    Generate,
    StreamEvent,
)
from runtime import ActorRef, DeliveryError
from runtime.streams import StreamRegistry

ADMISSION_TIMEOUT = 30.0
"""Seconds to wait for the generation actor to take a request in."""


class EventStream:
    """One request's events; iteration ends after its ``Finished`` or ``Failed``."""

    def __init__(self, receive: MemoryObjectReceiveStream[StreamEvent]) -> None:
        self._receive = receive
        self._first: StreamEvent | None = None
        self.ended = False

    @classmethod
    def of_one(cls, receive: MemoryObjectReceiveStream[StreamEvent], event: Failed) -> EventStream:
        """A stream holding only ``event`` (a request refused at admission)."""
        stream = cls(receive)
        stream._first = event
        return stream

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self.ended:
            raise StopAsyncIteration
        if self._first is not None:
            event, self._first = self._first, None
        else:
            try:
                event = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
        self.ended = isinstance(event, Finished | Failed)
        return event


class GenerationClient:
    """Opens per-request result streams and talks to the generation actor."""

    def __init__(self, ref: ActorRef, streams: StreamRegistry[StreamEvent]) -> None:
        self.ref = ref
        self.streams = streams

    @contextlib.asynccontextmanager
    async def stream(
        self, request: Generate, *, timeout: float = ADMISSION_TIMEOUT
    ) -> AsyncIterator[EventStream]:
        """Submit ``request`` and yield its events; leaving early cancels it.

        The events end with exactly one ``Finished`` or ``Failed``. If the
        caller leaves the block first (disconnect, deadline, error), the
        request is cancelled so it leaves the batch before the next step.
        """
        # Room for one chunk per token plus the terminal event: never full.
        receive = self.streams.open(request.request_id, max(request.params.max_tokens, 0) + 2)
        events = EventStream(receive)
        try:
            answer = await self.ref.ask(request, timeout=timeout)
            if isinstance(answer, Failed):
                events = EventStream.of_one(receive, answer)
            else:
                assert isinstance(answer, Accepted)
            yield events
        finally:
            self.streams.finish(request.request_id)
            receive.close()
            if not events.ended:
                self._cancel(request.request_id)

    def _cancel(self, request_id: str) -> None:
        # If the actor is gone or flooded, its own cleanup frees the slot.
        with contextlib.suppress(DeliveryError):
            self.ref.tell_nowait(Cancel(request_id=request_id))
