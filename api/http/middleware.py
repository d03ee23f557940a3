"""Pure-ASGI middleware: request ids, CORS, API keys and error mapping.

Order, outermost first: :class:`RequestIdMiddleware` (every response and log
line carries the id), :class:`CORSMiddleware`, :class:`ErrorMiddleware` (the
one place exceptions become problem responses), :class:`AuthMiddleware`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hmac
import logging
import re
import uuid
from collections.abc import Callable, Sequence

from api.http.asgi import (
    ASGIApp,
    ASGIMessage,
    ClientDisconnected,
    Receive,
    Request,
    Responder,
    Scope,
    Send,
)
from api.http.problems import HTTPProblem, ProblemShapes, innermost, problem_for
from api.http.tenants import TenantDirectory
from runtime import describe_failure

log = logging.getLogger("troupe.http")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
"""The current request's id, for log records."""

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record (unless its caller named the request); never drops one."""
        if not isinstance(getattr(record, "request_id", None), str):
            record.request_id = request_id_var.get()
        return True


class RequestIdMiddleware:
    """Echo a well-formed ``X-Request-ID`` or make one; add it to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Request(scope, receive).header("x-request-id")
        # A client id is echoed only if it is short and plain: it goes into logs.
        request_id = given if given and _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class CORSMiddleware:
    """Allow the configured origins (``*`` for any); answer preflight requests."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        origin = Request(scope, receive).header("origin") if scope["type"] == "http" else None
        if origin is None or not self.origins or not self._allowed(origin):
            await self.app(scope, receive, send)
            return
        allow = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS":
            headers = [
                *allow,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (
                    b"access-control-allow-headers",
                    b"authorization, content-type, x-request-id, x-api-key, anthropic-version",
                ),
                (b"access-control-max-age", b"600"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allow]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins


class ErrorMiddleware:
    """Turn any exception into a problem response, if the response has not started.

    An error answered before the request's body was read (a 413 on the declared
    length, a 401, a 404) leaves the rest of the body on the connection, where
    it cannot carry another request: such answers say ``connection: close`` so
    that clients do not reuse it.
    """

    def __init__(self, app: ASGIApp, shapes: ProblemShapes | None = None) -> None:
        self.app = app
        self.shapes = shapes or ProblemShapes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        shape = self.shapes.for_path(str(scope["path"]))
        if shape is not None:
            scope.setdefault("state", {})["problem_shape"] = shape
        started = False
        request = Request(scope, receive)
        body_read = request.header("content-length") in (None, "0") and (
            request.header("transfer-encoding") is None
        )

        async def tracking_send(message: ASGIMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def tracking_receive() -> ASGIMessage:
            nonlocal body_read
            message = await receive()
            body_read = body_read or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, tracking_receive, tracking_send)
        except Exception as exc:
            if isinstance(innermost(exc), ClientDisconnected):
                return  # gone before its body arrived: nobody to answer, nothing went wrong
            problem = problem_for(innermost(exc))
            if problem.status == 500:  # a bug: 503s and 504s are expected answers
                log.error("request failed: %s", describe_failure(exc))
            if started:
                return  # the stream already carried (or lost) the error
            if not body_read:
                problem = dataclasses.replace(
                    problem, headers=(*problem.headers, ("connection", "close"))
                )
            await Responder(send, request).problem(problem)


API_HINT = "Authorization: Bearer ..., or x-api-key"
ADMIN_HINT = "Authorization: Bearer ..."


class AuthMiddleware:
    """Bearer API keys for ``/v1/``, a separate admin key for ``/admin/``; health stays open.

    A request that presented a valid API key is tagged with it (a digest, in
    ``scope["state"]["api_key"]``), so that per-client limits count the key
    itself, not the spelling of the header that carried it, and with its
    tenant's name (``scope["state"]["tenant"]``, :mod:`api.http.tenants`). A route or
    method the app does not serve is left to the app to answer 404 or 405:
    that is the same answer with or without a key. ``public`` paths (the
    console's page and static files, which hold no data) need no key.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_keys: Sequence[str] | TenantDirectory,
        admin_key: str | None,
        serves: Callable[[str, str], bool] = lambda path, method: True,
        *,
        public: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self.app = app
        self.public = public
        self.directory = (
            api_keys if isinstance(api_keys, TenantDirectory) else TenantDirectory(api_keys)
        )
        """Swapped whole when the tenants change at run time."""
        self.admin_key = admin_key.encode() if admin_key else None
        self.serves = serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        path = str(scope.get("path", ""))
        if (
            scope["type"] == "http"
            and self.serves(path, str(scope["method"]))
            and not self.public(path)
        ):
            request = Request(scope, receive)
            presented = bearer_token(request.header("authorization"))
            if presented is None and not path.startswith("/admin/"):
                # Anthropic's clients send their key as ``x-api-key``.
                presented = api_key_header(request.header("x-api-key"))
            if path.startswith("/admin/"):
                self._check(presented, [self.admin_key] if self.admin_key else [], ADMIN_HINT)
            elif path.startswith("/v1/") and self.directory:
                tenant = self.directory.resolve(presented)
                if tenant is None:
                    raise _unauthorized(API_HINT)
                state = scope.setdefault("state", {})
                state["api_key"] = tenant.key_digest
                state["tenant"] = tenant.name
                state["tenant_weight"] = tenant.weight
        await self.app(scope, receive, send)

    @staticmethod
    def _check(presented: bytes | None, keys: Sequence[bytes], hint: str) -> bytes:
        """The key ``presented`` matches; 403 if there are none, 401 if it matches none."""
        if not keys:
            raise HTTPProblem(403, "forbidden", "no admin key is configured on this server")
        # Compare against every key, always, so timing says nothing about which matched.
        matched: bytes | None = None
        for key in keys:
            if hmac.compare_digest(presented or b"", key):
                matched = key
        if matched is None:
            raise _unauthorized(hint)
        return matched


def _unauthorized(hint: str) -> HTTPProblem:
    return HTTPProblem(
        401,
        "unauthorized",
        f"a valid API key is required ({hint})",
        (("www-authenticate", "Bearer"),),
    )


def bearer_token(header: str | None) -> bytes | None:
    """The credential of an ``Authorization: Bearer ...`` header, normalised.

    The scheme is case-insensitive and the spaces around the token do not count
    (RFC 9110 §11.1), so every spelling of one key yields the same bytes.
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None


def api_key_header(header: str | None) -> bytes | None:
    """The credential of an ``x-api-key`` header, spaces around it not counted."""
    if header is None or not header.strip():
        return None
    return header.strip().encode()
