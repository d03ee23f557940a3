"""How other code asks the generation actor for a stream of tokens."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio

from actors.generation.protocol import (
    Accepted,
    Cancel,
    EngineRequest,
    Failed,
    Finished,
    StreamEvent,
    TokenChunk,
    max_events,
)
from runtime import ActorRef, DeliveryError, Inbox

ADMISSION_TIMEOUT = 30.0
"""Seconds to wait for the generation actor to take a request in."""


class EventStream:
    """One request's events; iteration ends after its ``Finished`` or ``Failed``."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._first: StreamEvent | None = None
        self.ended = False

    @classmethod
    def of_one(cls, inbox: Inbox, event: Failed) -> EventStream:
        """A stream holding only ``event`` (a request refused at admission)."""
        stream = cls(inbox)
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
                message = await self._inbox.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            if not isinstance(message, TokenChunk | Finished | Failed):
                raise TypeError(f"unexpected {type(message).__name__} in a result inbox")
            event = message
        self.ended = isinstance(event, Finished | Failed)
        return event


OpenInbox = Callable[[str, int], Inbox]
"""Opens an inbox of the actor system by name and capacity (:meth:`ActorSystem.open_inbox`)."""


class GenerationClient:
    """Submits requests to the generation actor and reads their events from an inbox.

    Holds a reference and the system's inbox opener, no object of the actor:
    the events arrive as messages posted to the inbox named by the request id.
    """

    def __init__(self, ref: ActorRef, open_inbox: OpenInbox) -> None:
        self.ref = ref
        self._open_inbox = open_inbox

    @contextlib.asynccontextmanager
    async def stream(
        self, request: EngineRequest, *, timeout: float = ADMISSION_TIMEOUT
    ) -> AsyncIterator[EventStream]:
        """Submit ``request`` and yield its events; leaving early cancels it.

        The events end with exactly one ``Finished`` or ``Failed``. If the
        caller leaves the block first (disconnect, deadline, error), the
        request is cancelled so it leaves the batch before the next step.
        """
        # Room for one chunk per token plus the terminal event: never full.
        inbox = self._open_inbox(request.request_id, max_events(request))
        events = EventStream(inbox)
        try:
            answer = await self.ref.ask(request, timeout=timeout)
            if isinstance(answer, Failed):
                events = EventStream.of_one(inbox, answer)
            else:
                assert isinstance(answer, Accepted)
            yield events
        finally:
            inbox.close()
            if not events.ended:
                self._cancel(request.request_id)

    def _cancel(self, request_id: str) -> None:
        # If the actor is gone or flooded, its own cleanup frees the slot.
        with contextlib.suppress(DeliveryError):
            self.ref.tell_nowait(Cancel(request_id=request_id))
