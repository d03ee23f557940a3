"""Small pure-ASGI helpers: reading a request, sending JSON, problems and SSE.

Handlers receive a :class:`Request` and answer through :class:`Responder`,
which remembers whether the response has started: before that, an error can
still become a problem response; after it, only the stream can carry it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import anyio
import msgspec

from api.http.problems import HTTPProblem, Problem, ProblemShape, encode_problem

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_TIMEOUT = 30.0
"""Seconds a request body may take to arrive (a slow-body client is answered 408)."""
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


class Request:
    """One HTTP request: its scope, a bounded body reader and its request id."""

    def __init__(
        self, scope: Scope, receive: Receive, *, body_timeout: float = BODY_TIMEOUT
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.body_timeout = body_timeout

    @property
    def method(self) -> str:
        """The HTTP method."""
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        """The path, without the query string."""
        return str(self.scope["path"])

    @property
    def request_id(self) -> str:
        """The id the request-id middleware assigned."""
        return str(self.scope.get("state", {}).get("request_id", "-"))

    @property
    def problem_shape(self) -> ProblemShape | None:
        """This route's own error shape, if its protocol has one (set by the error middleware)."""
        shape: ProblemShape | None = self.scope.get("state", {}).get("problem_shape")
        return shape

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), if present."""
        wanted = name.encode("latin-1")
        for key, value in self.scope.get("headers", []):
            if key == wanted:
                return bytes(value).decode("latin-1")
        return None

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 once it grows past ``limit`` bytes."""
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPProblem(413, "body-too-large", f"the body is larger than {limit} bytes")
        # A client that trickles its body would hold a connection and a queue slot
        # for as long as it likes (slowloris); the whole body gets a deadline.
        with anyio.move_on_after(self.body_timeout):
            return await self._read_body(limit)
        raise HTTPProblem(
            408, "body-timeout", f"the body did not arrive within {self.body_timeout:g} s"
        )

    async def _read_body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, "body-too-large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def json_body(
        self, kind: Any, limit: int, not_honoured: Mapping[str, str] | None = None
    ) -> Any:
        """Decode a JSON body into ``kind`` (a type or a union): 415, 400 or 422 if it is not.

        ``not_honoured`` names top-level fields typed to accept only what the
        server can honour, with the reason a refused value is refused.
        """
        content_type = (self.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != JSON:
            raise HTTPProblem(415, "unsupported-media-type", "send the body as application/json")
        return decode_json(await self.body(limit), kind, not_honoured)


def decode_json(raw: bytes, kind: Any, not_honoured: Mapping[str, str] | None = None) -> Any:
    """``raw`` as ``kind``: 400 if it is not JSON (or nests too deeply), 422 if it does not fit.

    An integer-valued number (``5.0``) counts as an integer, as JSON Schema (and
    so the OpenAPI document) says it is. msgspec's typed decoder, the fast path
    every ordinary body takes, refuses it; only a body it refuses is decoded a
    second time, generically, with such numbers made integers.
    """
    explain = not_honoured or {}
    try:
        with _malformed_json_is_400():
            try:
                return msgspec.json.decode(raw, type=kind)
            except msgspec.ValidationError:
                value = _integral_floats_as_ints(msgspec.json.decode(raw))
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        # Raised by the conversion, or by the generic decode for a number no
        # Python value holds (``1e999999``, a 5,000-digit integer): valid JSON
        # that does not fit, the caller's 422.
        raise _invalid(str(exc), explain) from None


def _invalid(message: str, not_honoured: Mapping[str, str]) -> HTTPProblem:
    """The 422 for msgspec's ``message``; a reason of our own for a field we cannot honour."""
    at = _FIELD.search(message)
    if at is not None and at.group(1) in not_honoured:
        field = at.group(1)
        return HTTPProblem(422, "unsupported-field", f"`{field}`: {not_honoured[field]}")
    return HTTPProblem(422, "invalid-field", _field_message(message))


_FIELD = re.compile(r" - at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
"""The top-level field msgspec's error message points at."""


@contextlib.contextmanager
def _malformed_json_is_400() -> Iterator[None]:
    try:
        yield
    except msgspec.ValidationError:
        raise  # JSON that does not fit is the caller's 422, never "not JSON"
    except msgspec.DecodeError:
        raise HTTPProblem(400, "malformed-json", "the body is not valid JSON") from None
    except RecursionError:
        # msgspec's decoder recurses once per level: thousands of nested brackets
        # exhaust the stack. That is the client's malformed body, not our failure.
        raise HTTPProblem(
            400, "malformed-json", "the body nests arrays or objects too deeply"
        ) from None


def _integral_floats_as_ints(value: Any) -> Any:
    """``value`` with every float that has no fractional part turned into an int.

    Walks with an explicit stack (the decoder already bounded the depth, but a
    recursive walk would have its own limit). A float where a float is wanted
    still converts, since msgspec accepts an int for a float field.
    """
    root = [value]
    stack: list[tuple[list[Any] | dict[str, Any], Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, float) and item.is_integer():
            container[key] = int(item)
        elif isinstance(item, list):
            stack.extend((item, index) for index in range(len(item)))
        elif isinstance(item, dict):
            stack.extend((item, name) for name in item)
    return root[0]


class ClientDisconnected(Exception):
    """The client went away before the response was complete."""


def _field_message(text: str) -> str:
    # msgspec says e.g. "Expected `float`, got `str` - at `$.temperature`";
    # it names the field and never echoes the value, so it is safe to return.
    return text.replace("`$.", "`").replace("`$`", "the body")


class Responder:
    """Sends one response and remembers whether it has started."""

    def __init__(self, send: Send, request: Request) -> None:
        self._send = send
        self.request = request
        self.started = False

    async def start(self, status: int, content_type: str, extra: list[tuple[str, str]]) -> None:
        """Send the status line and headers."""
        headers = [(b"content-type", content_type.encode())]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes, *, more: bool = True) -> None:
        """Send part of the body."""
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(
        self, status: int, payload: object, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Send a complete JSON response."""
        await self.start(status, JSON, headers or [])
        await self.chunk(msgspec.json.encode(payload), more=False)

    async def problem(self, problem: Problem) -> None:
        """Send a complete problem+json response (or the route's protocol's own error shape)."""
        request_id = self.request.request_id
        shape = self.request.problem_shape
        if shape is not None:
            body = shape.body(problem, request_id)
            await self.json(shape.status(problem), body, list(problem.headers))
            return
        body = encode_problem(problem, request_id=request_id, instance=self.request.path)
        await self.start(problem.status, PROBLEM_JSON, list(problem.headers))
        await self.chunk(body, more=False)
