"""Where one request's choices come from (its model's generation actor) and go.

A :class:`Channel` is the plain path: the engine's events straight to the
reply writer. Behind a Ray Serve replica a stream may also be resumable, and
:class:`~api.serving.resumption.TappedChannel` reports each event on its way;
that choice is made once per request, so the token loop never asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from actors.generation.client import GenerationClient
from actors.generation.protocol import Generate, StreamEvent
from api.http.asgi import Responder
from api.serving.outcome import Outcome
from api.serving.writers import ReplyWriter


@dataclass(frozen=True)
class Channel:
    """One request's engine client, its responder and its reply writer."""

    client: GenerationClient
    respond: Responder
    reply: ReplyWriter

    def stream(self, generate: Generate) -> AbstractAsyncContextManager[AsyncIterator[StreamEvent]]:
        """Submit ``generate`` and yield its events; leaving early cancels it."""
        return self.client.stream(generate)

    async def begin(self, generate: Generate, run: Outcome) -> Generate | None:
        """The engine request a choice starts with (``None``: nothing is left to generate)."""
        return generate
