"""New audit rows, live: a bounded feed per console client, as server-sent events.

``GET /admin/audit-logs/stream`` sends each row the audit log records from then
on, as ``event: audit`` with the row as JSON, filtered like the query route
(``model``, ``endpoint``, ``status``). The feed never slows a request down:
publishing is ``send_nowait`` into each client's own buffer, and a client that
falls a whole buffer behind is cut off with ``event: end`` / ``data: lagged``
(it reloads the rows it missed from the query route and subscribes again).
The number of clients is bounded too (429 past it). When the server begins to
stop, every stream ends with ``data: shutdown``, so that hypercorn's graceful
shutdown does not wait on consoles that would never hang up.

The console reads the stream with ``fetch``, not ``EventSource``: the admin key
travels in the ``Authorization`` header, which ``EventSource`` cannot send, and
never in a URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.audit import AuditRecord
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem

CLIENT_BUFFER = 256
"""Rows a client may fall behind by before its stream is cut off (``lagged``)."""
MAX_CLIENTS = 16
"""Streams open at once; one more is answered 429."""
KEEPALIVE_SECONDS = 15.0
"""Seconds of silence after which a comment line keeps proxies from closing the stream."""
EVENT_STREAM = "text/event-stream"


@dataclasses.dataclass
class _Client:
    send: MemoryObjectSendStream[dict[str, Any]]
    lagged: bool = False


class AuditFeed:
    """Fans each recorded row out to the streams open now; bounded in clients and rows."""

    def __init__(self, buffer: int = CLIENT_BUFFER, max_clients: int = MAX_CLIENTS) -> None:
        self.buffer = buffer
        self.max_clients = max_clients
        self._clients: list[_Client] = []
        self.closed = False
        self.lagged_total = 0
        """Streams cut off because their client fell a whole buffer behind."""

    @property
    def clients(self) -> int:
        """Streams open now."""
        return len(self._clients)

    def publish(self, record: AuditRecord) -> None:
        """Hand ``record`` to every open stream without waiting (a full one is cut off)."""
        if not self._clients:
            return
        row: dict[str, Any] = msgspec.to_builtins(record)
        for client in list(self._clients):
            try:
                client.send.send_nowait(row)
            except anyio.WouldBlock:
                client.lagged = True
                self.lagged_total += 1
                self._drop(client)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(client)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[tuple[MemoryObjectReceiveStream[dict[str, Any]], _Client]]:
        """A stream of the rows recorded from now on, until the block ends or it is cut off."""
        if self.closed:
            raise HTTPProblem(503, "not-ready", "the server is stopping", (("retry-after", "1"),))
        if len(self._clients) >= self.max_clients:
            raise HTTPProblem(
                429,
                "too-many-streams",
                f"{self.max_clients} audit streams are open; close one first",
                (("retry-after", "5"),),
            )
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](self.buffer)
        client = _Client(send)
        self._clients.append(client)
        try:
            with receive:
                yield receive, client
        finally:
            self._drop(client)

    def close(self) -> None:
        """End every stream (the server is stopping) and refuse new ones."""
        self.closed = True
        for client in list(self._clients):
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        with contextlib.suppress(ValueError):
            self._clients.remove(client)
        client.send.close()


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """The query route's equality filters, applied to live rows."""

    model: str | None = None
    endpoint: str | None = None
    status: int | None = None

    def __call__(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` passes every filter that is set."""
        return (
            (self.model is None or row["model"] == self.model)
            and (self.endpoint is None or row["endpoint"] == self.endpoint)
            and (self.status is None or row["status"] == self.status)
        )


async def stream_rows(
    feed: AuditFeed, wanted: RowFilter, request: Request, respond: Responder
) -> None:
    """Send the rows that pass ``wanted`` as server-sent events, until the feed or client ends."""
    with feed.subscribe() as (rows, client):
        headers = [("cache-control", "no-store"), ("x-accel-buffering", "no")]
        await respond.start(200, EVENT_STREAM, headers)
        # A first line at once: the client knows it is subscribed, so no row it
        # causes from now on can be missed.
        await respond.chunk(b": subscribed\n\n")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, request, tg.cancel_scope)
            await _forward(rows, wanted, respond)
            reason = "lagged" if client.lagged else "shutdown"
            await respond.chunk(f"event: end\ndata: {reason}\n\n".encode(), more=False)
            tg.cancel_scope.cancel()


async def _forward(
    rows: MemoryObjectReceiveStream[dict[str, Any]], wanted: RowFilter, respond: Responder
) -> None:
    """Forward rows until the feed ends this stream (the client lagged, or the server stops)."""
    while True:
        with anyio.move_on_after(KEEPALIVE_SECONDS) as idle:
            try:
                row = await rows.receive()
            except anyio.EndOfStream:
                return
        if idle.cancelled_caught:
            await respond.chunk(b": keepalive\n\n")
        elif wanted(row):
            await respond.chunk(b"event: audit\ndata: " + msgspec.json.encode(row) + b"\n\n")


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """Stop the stream when the client goes away (sends alone might not notice)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
