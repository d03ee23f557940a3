"""``troupe serve --ray`` with one replica: shedding, and Serve's health check.

The replica admits one request (``--queue-max-requests 1``), so Serve's bounds
are one in flight on the replica and one waiting in the ingress's router; the
rest are refused at once. Its supervisor gives up at the first crash
(``--restart-intensity 0``), which fails Serve's health check: Serve replaces
the replica.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.drills import DRILL_FLAGS, drill
from tests.server import Server, running_server
from tests.test_ray_replicas import RAY_STARTUP, wait_announced

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
EOS = 2
"""The tiny model's end-of-text token, kept out of the long answers so that they last."""


@pytest.fixture
def anyio_backend() -> str:
    """The client's loop; the server is another process either way."""
    return "asyncio"


@pytest.fixture(scope="module")
def small(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One replica that admits one request at a time."""
    tmp = tmp_path_factory.mktemp("ray-overflow")
    args = (
        *("--ray", "--replicas", "1", "--queue-max-requests", "1", "--engine", "thread"),
        *(*DRILL_FLAGS, "--restart-intensity", "0"),
    )
    with running_server(model_dir, tmp, *args, startup_timeout=RAY_STARTUP) as server:
        wait_announced(server)
        yield server


def chat_body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "logit_bias": {str(EOS): -100},
        "stream": True,
    }


async def test_a_full_queue_is_answered_503_with_retry_after(small: Server) -> None:
    """One request holds the replica until four of five others are refused, then lets go.

    Ordered by events, not by timing: the holder is running (its first token
    came) before the others are sent, and it is released only once four of
    them have been answered 503, so no answer depends on how fast the machine is.
    """
    url = small.url + "/v1/chat/completions"
    running, refused, released = anyio.Event(), anyio.Event(), anyio.Event()
    held = {"done": False}
    answers: list[httpx.Response] = []

    async def hold() -> None:
        async with client.stream("POST", url, json=chat_body(1900)) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                running.set()
                if line == "data: [DONE]":
                    held["done"] = True
                if released.is_set():
                    return  # closing the stream cancels the request

    async def ask() -> None:
        async with client.stream("POST", url, json=chat_body(4)) as reply:
            if reply.status_code == 503 and sum(a.status_code == 503 for a in answers) == 3:
                refused.set()
            answers.append(reply)
            await reply.aread()

    async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await running.wait()
        for _ in range(5):
            tg.start_soon(ask)
        await refused.wait()
        assert not held["done"], "the holder finished before the others were answered"
        released.set()
    statuses = sorted(reply.status_code for reply in answers)
    # The holder on the replica, one waiting for it; the other four shed at once.
    assert statuses == [200, 503, 503, 503, 503], statuses
    for reply in answers:
        if reply.status_code == 503:
            assert reply.headers["content-type"] == "application/problem+json"
            assert int(reply.headers["retry-after"]) >= 1
            problem = reply.json()
            assert problem["type"].endswith("/overloaded")
            assert problem["request_id"] == reply.headers["x-request-id"]
        else:
            assert reply.text.endswith("data: [DONE]\n\n")


def test_a_replica_whose_supervisor_gave_up_is_replaced_by_serve(small: Server) -> None:
    def chat() -> httpx.Response:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        return httpx.post(small.url + "/v1/chat/completions", json=body, timeout=60)

    before = chat()
    assert before.status_code == 200
    drill(small, {"kind": "engine_crash", "after_tokens": 1, "times": 1})
    crashed = chat()
    assert crashed.status_code == 503, crashed.text
    assert crashed.headers["x-troupe-replica"] == before.headers["x-troupe-replica"]
    # Serve's next health checks fail; it stops the replica and starts another.
    deadline = time.monotonic() + 120
    while True:
        answer = chat()
        replaced = answer.headers.get("x-troupe-replica") != before.headers["x-troupe-replica"]
        if answer.status_code == 200 and replaced:
            break
        assert time.monotonic() < deadline, small.log()[-4000:]
        time.sleep(0.5)  # Serve's health checks run on their own period; nothing to wait on
