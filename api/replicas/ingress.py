"""The ingress tier: reads each HTTP request and calls a model replica through a handle.

Serve's HTTP proxy cannot route by body (its router never sees it), so this
thin deployment reads the body, derives the prompt-prefix hint
(:func:`~api.replicas.prefix.route_hint`) and hands both to the model
deployment's handle, whose :class:`~api.replicas.router.PrefixAffinityRouter`
picks the replica. The replica's status, headers (``Retry-After`` among them)
and body come back unchanged, with ``x-troupe-replica`` naming the replica.

Holding the stream here is what lets a lost replica be survived: a request
whose replica died before it answered (no token had been sent) is sent to
another replica; a stream cut after it started is resumed on another replica
from what its client was sent (:mod:`api.serving.resumption`), and ends with the
route's own SSE error event only when none can take it, never with a silently
truncated body. Errors of the ingress's own are problem+json (Anthropic's
shape on its routes) with the request's id.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Final, cast

import msgspec
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from api.anthropic.message_types import PROBLEM_SHAPES, error_body
from api.config.settings import LogFormat, LogLevel
from api.http.asgi import ClientDisconnected, Receive, Request, Responder, Scope, Send
from api.http.logs import configure_logging
from api.http.problems import HTTPProblem, Problem
from api.openai.bodies import DONE_EVENT, StreamError, StreamErrorDetail, encode_event
from api.replicas.messages import ForwardedRequest, ResponseBody, ResponseHead
from api.replicas.prefix import route_hint
from api.serving.resumption import ResumeFrom, SentSoFar
from api.serving.writers import named_event

log = logging.getLogger("troupe.ingress")

ATTEMPTS: Final = 3
"""Replicas a request is offered to, one after another, while they die before answering."""
OVERLOAD_RETRY_AFTER: Final = 1
"""Seconds a client shed by the queue bound is told to wait."""
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_REPLICA_LOST = (RayActorError, ActorUnavailableError)


class IngressLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What the ingress enforces itself, before any replica sees the request, and how it logs."""

    max_body_bytes: int
    body_timeout: float
    log_level: LogLevel = "info"
    log_format: LogFormat = "json"


class NoReplicaAnswered(Exception):
    """Every attempt met a replica that died before it answered."""


@serve.ingress()
class TroupeIngress:
    """The HTTP front of the replicas (Serve ingress deployment)."""

    def __init__(self, replicas: DeploymentHandle[Any], limits: IngressLimits) -> None:
        configure_logging(limits.log_level, limits.log_format)
        self._app = IngressApp(replicas, limits)

    def __serve_build_asgi_app__(self) -> IngressApp:
        """The ASGI app Serve's proxy calls."""
        return self._app


class IngressApp:
    """Forwards each HTTP exchange to a model replica (an ASGI 3 app)."""

    def __init__(self, replicas: DeploymentHandle[Any], limits: IngressLimits) -> None:
        self._replicas = replicas.options(method_name="forward", stream=True)
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One ASGI connection (a lifespan, or an HTTP exchange)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._exchange(scope, receive, send)

    async def _exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, request_id = _with_request_id(scope.get("headers", []))
        state = {"request_id": request_id, "problem_shape": PROBLEM_SHAPES.for_path(scope["path"])}
        scope = {**scope, "headers": headers, "state": state}
        request = Request(scope, receive, body_timeout=self._limits.body_timeout)
        respond = Responder(send, request)
        try:
            body = await request.body(self._limits.max_body_bytes)
        except HTTPProblem as exc:  # too large, or too slow
            return await respond.problem(exc.problem)
        except ClientDisconnected:
            return
        forwarded = ForwardedRequest(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        try:
            stream, head = await self._first_answer(forwarded)
        except BackPressureError:
            detail = "every replica's queue is full; retry later"
            retry = (("retry-after", str(OVERLOAD_RETRY_AFTER)),)
            return await respond.problem(Problem(503, "overloaded", detail, retry))
        except (NoReplicaAnswered, DeploymentUnavailableError):
            detail = "no replica could take the request; retry later"
            return await respond.problem(
                Problem(503, "replicas-unavailable", detail, (("retry-after", "1"),))
            )
        # Serve's proxy adds x-request-id to every response (the id it put in
        # the request, which the replica echoed): one copy, not two.
        headers = [(k, v) for k, v in head.headers if k.lower() != b"x-request-id"]
        headers.append((b"x-troupe-replica", head.replica.encode()))
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        error_event = _stream_error(scope["path"], head, request_id)
        if error_event is None:
            return await _relay_whole(stream, send)
        await self._relay_resuming(forwarded, stream, head, send, error_event)

    async def _relay_resuming(
        self,
        request: ForwardedRequest,
        stream: DeploymentResponseGenerator[Any],
        head: ResponseHead,
        send: Send,
        error_event: bytes,
    ) -> None:
        """Relay a stream, resuming it on another replica each time its replica is lost.

        It ends with ``error_event`` only once no replica can take it over, or
        after :data:`ATTEMPTS` losses.
        """
        sent = SentSoFar()
        sent.note(head.progress)
        losses = 0
        while not await _relay_stream(stream, send, sent):
            losses += 1
            resumed = None
            if losses < ATTEMPTS:
                resumed = await self._resumed(request, sent.resume_from())
            if resumed is None:
                end = {"type": "http.response.body", "body": error_event, "more_body": False}
                return await send(end)
            stream = resumed

    async def _resumed(
        self, request: ForwardedRequest, resume: ResumeFrom | None
    ) -> DeploymentResponseGenerator[Any] | None:
        """The stream of a replica that goes on from ``resume``; ``None`` if none can."""
        if resume is None:
            return None  # the stream was not resumable (several choices)
        try:
            stream, head = await self._first_answer(msgspec.structs.replace(request, resume=resume))
        except (BackPressureError, NoReplicaAnswered, DeploymentUnavailableError) as exc:
            log.warning(
                "no replica could resume the stream: %s",
                type(exc).__name__,
                extra={"event": "stream_not_resumed"},
            )
            return None
        if head.status != 200:  # refused there (rate limit, not ready ...)
            stream.cancel()  # type: ignore[no-untyped-call]
            log.warning(
                "replica %s refused to resume the stream (%d)",
                head.replica,
                head.status,
                extra={"event": "stream_not_resumed", "status": head.status},
            )
            return None
        log.info(
            "resumed a stream on replica %s after %d tokens",
            head.replica,
            len(resume.tokens),
            extra={"event": "stream_resumed", "tokens": len(resume.tokens)},
        )
        return stream

    async def _first_answer(
        self, request: ForwardedRequest
    ) -> tuple[DeploymentResponseGenerator[Any], ResponseHead]:
        """The stream of the first replica that answers, and its head."""
        hint = route_hint(request.method, request.path, request.body)
        for attempt in range(1, ATTEMPTS + 1):
            stream = cast(
                DeploymentResponseGenerator[Any], self._replicas.remote(request, hint=hint)
            )
            try:
                # Serve routes (and sheds, with BackPressureError) on the first read.
                head = await stream.__anext__()
            except _REPLICA_LOST as exc:
                stream.cancel()  # type: ignore[no-untyped-call]
                log.warning(
                    "a replica was lost before it answered (attempt %d of %d): %s",
                    attempt,
                    ATTEMPTS,
                    type(exc).__name__,
                    extra={"event": "replica_lost", "attempt": attempt},
                )
                continue
            if not isinstance(head, ResponseHead):
                raise TypeError(f"a replica answered {type(head).__name__} first")
            return stream, head
        raise NoReplicaAnswered


async def _relay_whole(stream: DeploymentResponseGenerator[Any], send: Send) -> None:
    """Send a response that is not a stream; a replica lost mid-body closes the connection.

    The client sees a body cut short (its length, or its chunked ending, is
    missing), never a body that looks whole.
    """
    async for part in stream:
        if isinstance(part, ResponseBody):
            await send({"type": "http.response.body", "body": part.data, "more_body": part.more})
            if not part.more:
                return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_stream(
    stream: DeploymentResponseGenerator[Any], send: Send, sent: SentSoFar
) -> bool:
    """Send a stream's parts, noting what they carried; ``False``: its replica was lost."""
    try:
        async for part in stream:
            if isinstance(part, ResponseBody):
                await send(
                    {"type": "http.response.body", "body": part.data, "more_body": part.more}
                )
                sent.note(part.progress)
                if not part.more:
                    return True
    except _REPLICA_LOST as exc:
        log.warning(
            "a replica was lost mid-stream after %d tokens: %s",
            sent.tokens,
            type(exc).__name__,
            extra={"event": "replica_lost_mid_stream", "tokens": sent.tokens},
        )
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


def _stream_error(path: str, head: ResponseHead, request_id: str) -> bytes | None:
    """The event ending an SSE stream of ``path`` with an error; ``None``: not a stream."""
    content_type = dict(head.headers).get(b"content-type", b"")
    if not content_type.startswith(b"text/event-stream"):
        return None
    detail = "the replica serving this stream was lost"
    if PROBLEM_SHAPES.for_path(path) is not None:
        return named_event("error", error_body(503, detail, request_id))
    if path == "/v1/responses":
        payload = {
            "type": "error",
            "code": "server_error",
            "message": f"{detail} (request {request_id})",
            "param": None,
        }
        return named_event("error", payload)
    error = StreamErrorDetail(message=detail, type="replica-lost", code=503, request_id=request_id)
    return encode_event(StreamError(error=error)) + DONE_EVENT


def _with_request_id(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], str]:
    """The headers with one well-formed ``x-request-id`` (the client's, or a new one)."""
    given = next((bytes(v) for k, v in headers if bytes(k).lower() == b"x-request-id"), None)
    if given is not None and _VALID_ID.fullmatch(given):
        return [(bytes(k), bytes(v)) for k, v in headers], given.decode()
    request_id = uuid.uuid4().hex
    kept = [(bytes(k), bytes(v)) for k, v in headers if bytes(k).lower() != b"x-request-id"]
    return [*kept, (b"x-request-id", request_id.encode())], request_id


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
