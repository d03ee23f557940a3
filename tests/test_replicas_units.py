"""The replicas' parts that need no Ray: prefix hints, messages, and the app bridge.

The bridge is driven with the real app (its actors, a thread engine, the
tiny model) and with small ASGI apps that stand for a client going away and
a startup that fails. Ray Serve calls replicas on asyncio, so these run there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import anyio
import msgspec
import pytest

from api.app import TroupeApp, build_asgi
from api.cli.serve import build_tree
from api.config.settings import Settings
from api.http.asgi import ASGIMessage, Receive, Scope, Send
from api.replicas.bridge import AppBridge, ReplicaStartFailed
from api.replicas.messages import (
    ForwardedRequest,
    ResponseBody,
    ResponseHead,
    ResponsePart,
    RouteHint,
)
from api.replicas.prefix import BLOCK_CHARS, MAX_BLOCKS, prefix_blocks, route_hint

pytestmark = pytest.mark.timeout(60)
SYSTEM = "You are a careful assistant who answers in French. " * 20  # ~1 KiB


@pytest.fixture
def anyio_backend() -> str:
    """Ray Serve runs replica code on asyncio only."""
    return "asyncio"


def chat(system: str, user: str, **extra: object) -> bytes:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return json.dumps({"model": "tiny", "messages": messages, **extra}).encode()


def test_requests_sharing_a_system_prompt_share_its_blocks_and_no_more() -> None:
    first = route_hint("POST", "/v1/chat/completions", chat(SYSTEM, "Bonjour"))
    second = route_hint("POST", "/v1/chat/completions", chat(SYSTEM, "Quelle heure est-il ?"))
    other = route_hint("POST", "/v1/chat/completions", chat("Answer in German.", "Bonjour"))
    shared = len(SYSTEM) // BLOCK_CHARS
    assert first.blocks[:shared] == second.blocks[:shared]
    assert first.blocks[-1] != second.blocks[-1]
    assert not set(first.blocks) & set(other.blocks)


def test_only_generation_requests_with_json_bodies_get_a_hint() -> None:
    body = chat(SYSTEM, "Bonjour")
    assert route_hint("POST", "/v1/chat/completions", body).blocks
    assert route_hint("POST", "/v1/messages", body).blocks
    assert route_hint("GET", "/v1/models", b"").blocks == ()
    assert route_hint("POST", "/v1/embeddings", body).blocks == ()
    assert route_hint("POST", "/v1/chat/completions", b"{not json").blocks == ()
    assert route_hint("POST", "/v1/chat/completions", b"[1, 2]").blocks == ()


def test_the_prefix_is_bounded_and_splits_are_not_confused() -> None:
    assert len(prefix_blocks("x" * BLOCK_CHARS * (MAX_BLOCKS + 5))) == MAX_BLOCKS
    anthropic = {"model": "m", "system": "ab", "messages": [{"role": "user", "content": "c"}]}
    moved = {"model": "m", "system": "a", "messages": [{"role": "user", "content": "bc"}]}
    assert route_hint("POST", "/v1/messages", json.dumps(anthropic).encode()) != route_hint(
        "POST", "/v1/messages", json.dumps(moved).encode()
    )


def test_every_message_round_trips_through_msgpack() -> None:
    parts: list[object] = [
        ForwardedRequest(
            method="POST",
            path="/v1/chat/completions",
            query_string=b"a=1",
            headers=[(b"content-type", b"application/json")],
            body=b"{}",
            client=("10.0.0.1", 4242),
        ),
        RouteHint(blocks=(1, 2, 2**62)),
        ResponseHead(status=503, headers=[(b"retry-after", b"1")], replica="r0"),
        ResponseBody(data=b"data: [DONE]\n\n", more=False),
    ]
    union = ForwardedRequest | RouteHint | ResponseHead | ResponseBody
    for part in parts:
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(part), type=union) == part


async def collect(bridge: AppBridge, request: ForwardedRequest) -> list[ResponsePart]:
    return [part async for part in bridge.exchange(request)]


async def test_the_bridge_starts_serves_and_stops_the_whole_server(model_dir: Path) -> None:
    settings = Settings(model=str(model_dir), engine="thread")
    app = TroupeApp(settings, await build_tree(settings))
    bridge = AppBridge(build_asgi(app), replica="replica-a")
    await bridge.start()
    try:
        assert app.lifespan.system is not None and app.lifespan.system.running
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"req-1")]
        streamed = ForwardedRequest(
            method="POST",
            path="/v1/chat/completions",
            headers=headers,
            body=chat("Be brief.", "Hello", max_tokens=6, stream=True),
        )
        head, *body = await collect(bridge, streamed)
        assert isinstance(head, ResponseHead)
        assert (head.status, head.replica) == (200, "replica-a")
        assert (b"x-request-id", b"req-1") in head.headers
        assert all(isinstance(part, ResponseBody) for part in body)
        text = b"".join(part.data for part in body if isinstance(part, ResponseBody))
        assert text.startswith(b"data: ") and text.endswith(b"data: [DONE]\n\n")
        assert isinstance(body[-1], ResponseBody) and not body[-1].more

        wrong = ForwardedRequest(
            method="POST", path="/v1/chat/completions", headers=headers[:1], body=b"{"
        )
        head, *body = await collect(bridge, wrong)
        assert isinstance(head, ResponseHead) and head.status == 400
        assert (b"content-type", b"application/problem+json") in head.headers
    finally:
        await bridge.aclose()
    assert app.lifespan.system is not None and not app.lifespan.system.running


async def test_a_caller_that_goes_away_is_a_disconnect_the_app_sees() -> None:
    saw_disconnect = anyio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _accept_lifespan(receive, send)
            return
        await receive()  # the body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                message = await receive()
                assert message["type"] == "http.disconnect"
                saw_disconnect.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            while True:
                await send({"type": "http.response.body", "body": b"tick ", "more_body": True})
                await anyio.sleep(0.01)

    bridge = AppBridge(endless)
    await bridge.start()
    stream = cast(
        AsyncGenerator[ResponsePart, None],
        bridge.exchange(ForwardedRequest(method="GET", path="/ticks")),
    )
    head = await stream.__anext__()
    assert isinstance(head, ResponseHead) and head.status == 200
    first = await stream.__anext__()
    assert isinstance(first, ResponseBody) and first.data.startswith(b"tick ")
    await stream.aclose()  # returns once the app has ended
    assert saw_disconnect.is_set()
    await bridge.aclose()


async def test_a_failed_startup_is_reported_with_the_apps_reason() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the model did not load"})

    bridge = AppBridge(failing)
    with pytest.raises(ReplicaStartFailed, match="the model did not load"):
        await bridge.start()


async def _accept_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: ASGIMessage = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return
