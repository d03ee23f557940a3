"""Run the whole server's ASGI app inside a Ray Serve replica, without an HTTP server.

A replica receives requests as :class:`ForwardedRequest` messages through a
deployment handle, not on a socket, so nothing listens: :class:`AppBridge`
drives the app's lifespan (which starts and stops the actor system and its
engine process) and calls the app once per request, turning what the app sends
into :class:`ResponseHead`/:class:`ResponseBody` parts.

Ray Serve runs replica code on asyncio and calls each method from its own
task, so the bridge owns two kinds of asyncio task: the lifespan, for the
replica's life (joined by :meth:`AppBridge.aclose`), and one per exchange
(joined before :meth:`AppBridge.exchange` returns).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from api.http import ASGIApp, Message
from api.replicas.messages import ForwardedRequest, ResponseBody, ResponseHead, ResponsePart

log = logging.getLogger("troupe.replica")

DISCONNECT_GRACE: Final = 5.0
"""Seconds an exchange whose caller went away may take to see the disconnect and
finish its cleanup (release its admission, write its audit row) before it is cancelled."""
MAX_BATCH_BYTES: Final = 64 * 1024
"""Body bytes sent as one part at most: parts ready together cross the handle together."""


class ReplicaStartFailed(RuntimeError):
    """The app's startup failed; the message is the app's own sanitized reason."""


class AppEndedEarly(RuntimeError):
    """The app returned (or raised) before it finished its response."""


class _End:
    """Put on an exchange's queue when the app returns (``error``: it raised)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class AppBridge:
    """One ASGI app, started once and called per forwarded request."""

    def __init__(self, asgi: ASGIApp, replica: str = "") -> None:
        self._asgi = asgi
        self._replica = replica
        self._lifespan_in: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._lifespan: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the app (its lifespan's startup); raise :class:`ReplicaStartFailed` if it fails."""
        self._lifespan = asyncio.create_task(self._run_lifespan(), name="replica-lifespan")
        await self._lifespan_in.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failure is not None:
            await self.aclose()
            raise ReplicaStartFailed(self._failure)

    async def aclose(self, timeout: float = 60.0) -> None:
        """Run the app's lifespan shutdown (drains nothing: Serve drained the replica first)."""
        if self._lifespan is None:
            return
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            log.warning("the app did not stop in %.0f s", timeout, extra={"event": "replica_stop"})
        self._lifespan.cancel()
        await asyncio.gather(self._lifespan, return_exceptions=True)
        self._lifespan = None

    async def _run_lifespan(self) -> None:
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await self._asgi(scope, self._lifespan_in.get, self._lifespan_send)
        except Exception as exc:  # an app that raises from its lifespan failed to start
            if not self._started.is_set():
                self._failure = type(exc).__name__
        finally:
            self._started.set()
            self._stopped.set()

    async def _lifespan_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.failed":
            self._failure = str(message.get("message") or "startup failed")
            self._started.set()
        elif kind == "lifespan.startup.complete":
            self._started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self._stopped.set()

    async def exchange(self, request: ForwardedRequest) -> AsyncIterator[ResponsePart]:
        """Call the app with ``request``; yield its head, then its body in parts.

        Closing the iterator early (the caller went away) tells the app the
        client disconnected, and waits for it to finish, as a socket would.
        """
        parts: asyncio.Queue[ResponsePart | _End] = asyncio.Queue()
        disconnected = asyncio.Event()
        task = asyncio.create_task(self._call(request, parts, disconnected))
        pending: ResponsePart | _End | None = None
        try:
            while True:
                part = pending if pending is not None else await parts.get()
                pending = None
                if isinstance(part, _End):
                    raise AppEndedEarly from part.error
                if isinstance(part, ResponseBody):
                    part, pending = _gather_body(part, parts)
                yield part
                if isinstance(part, ResponseBody) and not part.more:
                    return
        finally:
            disconnected.set()
            await _join(task)

    async def _call(
        self,
        request: ForwardedRequest,
        parts: asyncio.Queue[ResponsePart | _End],
        disconnected: asyncio.Event,
    ) -> None:
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                parts.put_nowait(
                    ResponseHead(status=message["status"], headers=headers, replica=self._replica)
                )
            elif message["type"] == "http.response.body":
                more = bool(message.get("more_body", False))
                body = bytes(message.get("body", b""))
                if body or not more:
                    parts.put_nowait(ResponseBody(data=body, more=more))

        error: BaseException | None = None
        try:
            await self._asgi(_scope(request), receive, send)
        except Exception as exc:  # the app's error middleware answers errors; this is a bug
            error = exc
            log.exception("the app raised", extra={"event": "replica_app_error"})
        finally:
            parts.put_nowait(_End(error))


def _gather_body(
    first: ResponseBody, parts: asyncio.Queue[ResponsePart | _End]
) -> tuple[ResponseBody, ResponsePart | _End | None]:
    """``first`` and the body parts already queued behind it, as one part.

    Also returns the first queued item that is not a body part (to be handled next), if any.
    """
    chunks, size, more = [first.data], len(first.data), first.more
    while more and size < MAX_BATCH_BYTES and not parts.empty():
        item = parts.get_nowait()
        if not isinstance(item, ResponseBody):
            return ResponseBody(data=b"".join(chunks), more=more), item
        chunks.append(item.data)
        size += len(item.data)
        more = item.more
    return ResponseBody(data=b"".join(chunks), more=more), None


async def _join(task: asyncio.Task[None]) -> None:
    """Wait for an exchange's app call to end; cancel it after the grace."""
    if not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_GRACE)
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _scope(request: ForwardedRequest) -> dict[str, Any]:
    path = request.path
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": request.query_string,
        "root_path": "",
        "headers": list(request.headers),
        "client": request.client,
        "server": None,
        "state": {},
    }
