"""The pure-ASGI middleware, driven with raw ASGI messages."""

from __future__ import annotations

from typing import Any

import pytest

from api.http.asgi import ASGIMessage, Receive, Scope, Send
from api.http.middleware import CORSMiddleware, ErrorMiddleware, RequestIdMiddleware

pytestmark = pytest.mark.timeout(10)


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("secret prompt text /home/user/file")


async def call(
    app: Any, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> list[ASGIMessage]:
    sent: list[ASGIMessage] = []
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": "/v1/models",
        "headers": headers or [],
    }

    async def receive() -> ASGIMessage:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def header(messages: list[ASGIMessage], name: bytes) -> bytes | None:
    start = messages[0]
    return dict(start["headers"]).get(name)


async def test_cors_allows_configured_origins_and_answers_preflight() -> None:
    app = CORSMiddleware(ok_app, ["https://app.example"])
    allowed = await call(app, headers=[(b"origin", b"https://app.example")])
    assert header(allowed, b"access-control-allow-origin") == b"https://app.example"
    other = await call(app, headers=[(b"origin", b"https://evil.example")])
    assert header(other, b"access-control-allow-origin") is None
    preflight = await call(app, "OPTIONS", [(b"origin", b"https://app.example")])
    assert preflight[0]["status"] == 204
    assert b"POST" in (header(preflight, b"access-control-allow-methods") or b"")


async def test_unexpected_errors_become_a_500_problem_that_says_nothing_of_them() -> None:
    app = RequestIdMiddleware(ErrorMiddleware(failing_app))
    sent = await call(app)
    assert sent[0]["status"] == 500
    assert header(sent, b"content-type") == b"application/problem+json"
    body = sent[1]["body"]
    assert b"secret" not in body and b"/home" not in body and b"RuntimeError" not in body
    assert header(sent, b"x-request-id") is not None
