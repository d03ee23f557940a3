"""Run the whole server's ASGI app inside a Ray Serve replica, without an HTTP server.

A replica receives requests as :class:`ForwardedRequest` messages through a
deployment handle, not on a socket, so nothing listens: :class:`AppBridge`
drives the app's lifespan (which starts and stops the actor system and its
engine process) and calls the app once per request, turning what the app sends
into :class:`ResponseHead`/:class:`ResponseBody` parts. Each call gets a
:class:`~api.serving.resumption.StreamTap` in its scope: what a resumable stream
reports to it travels on the part that follows, and a resumed stream's replay
of what its client already has is dropped here.

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

import msgspec

from api.http.asgi import ASGIApp, ASGIMessage
from api.replicas.messages import ForwardedRequest, ResponseBody, ResponseHead, ResponsePart
from api.serving.resumption import SCOPE_EXTENSION, Replayed, StreamProgress, StreamTap

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


_Item = ResponsePart | StreamProgress | Replayed | _End
"""What an exchange's app call puts on its queue, in the order it happened."""


class AppBridge:
    """One ASGI app, started once and called per forwarded request."""

    def __init__(self, asgi: ASGIApp, replica: str = "") -> None:
        self._asgi = asgi
        self._replica = replica
        self._lifespan_in: asyncio.Queue[ASGIMessage] = asyncio.Queue()
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

    async def _lifespan_send(self, message: ASGIMessage) -> None:
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
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        disconnected = asyncio.Event()
        task = asyncio.create_task(self._call(request, queue, disconnected))
        reader = _PartReader(queue, replaying=request.resume is not None)
        try:
            while True:
                part = await reader.next_part()
                yield part
                if isinstance(part, ResponseBody) and not part.more:
                    return
        finally:
            disconnected.set()
            await _join(task)

    async def _call(
        self,
        request: ForwardedRequest,
        parts: asyncio.Queue[_Item],
        disconnected: asyncio.Event,
    ) -> None:
        delivered = False

        async def receive() -> ASGIMessage:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: ASGIMessage) -> None:
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
            tap = StreamTap(parts.put_nowait, request.resume)
            await self._asgi(_scope(request, tap), receive, send)
        except Exception as exc:  # the app's error middleware answers errors; this is a bug
            error = exc
            log.exception("the app raised", extra={"event": "replica_app_error"})
        finally:
            parts.put_nowait(_End(error))


class _PartReader:
    """Turns what the app did, in order, into the parts the ingress gets.

    The tap's reports travel on the part that follows them (the ingress counts
    them as the client's once it has sent that part). While a resumed stream
    replays what its client already has, its bytes are dropped here.
    """

    def __init__(self, queue: asyncio.Queue[_Item], replaying: bool) -> None:
        self._queue = queue
        self._replaying = replaying
        self._progress: StreamProgress | None = None
        self._next: _Item | None = None

    async def next_part(self) -> ResponsePart:
        """The next part to send on (raises :class:`AppEndedEarly` if the app ended first)."""
        while True:
            item = self._next if self._next is not None else await self._queue.get()
            self._next = None
            match item:
                case _End(error=error):
                    raise AppEndedEarly from error
                case StreamProgress():
                    self._note(item)
                case Replayed():
                    self._replaying = False
                case ResponseHead():
                    return self._head_with_created(item)
                case ResponseBody() if self._replaying:
                    if not item.more:  # the app ended while replaying (an error event)
                        return self._with_progress(item)
                case ResponseBody():
                    return self._with_progress(self._gathered(item))

    def _note(self, progress: StreamProgress) -> None:
        self._progress = progress if self._progress is None else self._progress.then(progress)

    def _head_with_created(self, head: ResponseHead) -> ResponseHead:
        """The head with the stream's ``created``, and no more.

        The chunks reported so far wait for the body part that holds their
        bytes (a stream's head is sent with its first chunk, before its bytes).
        """
        progress = self._progress
        if progress is None or progress.created is None:
            return head
        self._progress = msgspec.structs.replace(progress, created=None)
        return msgspec.structs.replace(head, progress=StreamProgress(created=progress.created))

    def _with_progress(self, part: ResponsePart) -> ResponsePart:
        if self._progress is None:
            return part
        part = msgspec.structs.replace(part, progress=self._progress)
        self._progress = None
        return part

    def _gathered(self, first: ResponseBody) -> ResponseBody:
        """``first`` and the body parts (and reports) already queued behind it, as one part."""
        chunks, size, more = [first.data], len(first.data), first.more
        while more and size < MAX_BATCH_BYTES and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, StreamProgress):
                self._note(item)
                continue
            if not isinstance(item, ResponseBody):
                self._next = item
                break
            chunks.append(item.data)
            size += len(item.data)
            more = item.more
        return ResponseBody(data=b"".join(chunks), more=more)


async def _join(task: asyncio.Task[None]) -> None:
    """Wait for an exchange's app call to end; cancel it after the grace."""
    if not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_GRACE)
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _scope(request: ForwardedRequest, tap: StreamTap) -> dict[str, Any]:
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
        "extensions": {SCOPE_EXTENSION: tap},
    }
