"""``troupe serve --ray``: two replicas behind Ray Serve's proxy, on a local Ray cluster.

Each replica is a whole server (its actors, its engine process, its prefix
cache); the tests reach them only through the port ``troupe serve`` was
given, as a client would, and tell the replicas apart by ``x-troupe-replica``.

The last test kills a replica under eight greedy streams (``SIGKILL``:
nothing of it cleans up). The streams it served are resumed on the other
replica from the tokens their clients had (see :mod:`api.serving.resumption`):
every client gets a whole answer, token for token the one an uncut request
gets, with no error event and usage counted across both replicas; and Serve
starts a replica in place of the killed one. It shares the module's cluster
(one Ray start fewer in the suite), so it runs last.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import psutil
import pytest

from tests.chat_streams import ChatStream
from tests.server import Server, running_server

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
RAY_STARTUP = 240.0
"""Seconds a local Ray cluster, Serve and two model replicas may take to come up on 2 cores."""
STREAMS = 8
MAX_TOKENS = 500
EOS = 2
"""The tiny model's end-of-text token, kept out so that every answer lasts ``MAX_TOKENS``."""
MODEL_REPLICA = "ServeReplica:mlx-troupe:troupe-model"
"""The process title of a model replica (Ray names its actor processes ``ray::<actor>``)."""
SYSTEM = (
    "You are the assistant of a small bookshop in Lyon. You answer questions about "
    "opening hours, orders, deliveries and returns, in the customer's language, "
    "politely and in at most three sentences. "
) * 4


@pytest.fixture
def anyio_backend() -> str:
    """The client's loop; the server is another process either way."""
    return "asyncio"


@pytest.fixture(scope="module")
def replicas(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``troupe serve --ray --replicas 2`` on the tiny model."""
    tmp = tmp_path_factory.mktemp("ray")
    args = ("--ray", "--replicas", "2", "--replica-cpus", "0.5")
    with running_server(model_dir, tmp, *args, startup_timeout=RAY_STARTUP) as server:
        wait_announced(server)
        yield server


def wait_announced(server: Server) -> None:
    """Wait for the line saying every replica is up (the first one answers before)."""
    deadline = time.monotonic() + RAY_STARTUP
    while "mlx-troupe: serving" not in server.log():
        assert time.monotonic() < deadline, server.log()
        assert server.process.poll() is None, server.log()
        time.sleep(0.1)  # a process we do not control; no event to wait on


async def stream_chat(client: httpx.AsyncClient, url: str, user: str) -> tuple[str, list[Any]]:
    """One streamed chat: the replica that served it, and its events."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": user}],
        "max_tokens": 24,
        "stream": True,
    }
    events: list[Any] = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
        return response.headers["x-troupe-replica"], events


async def test_two_replicas_serve_streaming_chat_through_the_proxy(replicas: Server) -> None:
    served: list[tuple[str, list[Any]]] = []

    async def one(index: int) -> None:
        served.append(await stream_chat(client, replicas.url, f"Question {index}: {'?' * index}"))

    async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(one, index)
    assert len(served) == 8
    for _, events in served:
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        assert not any("error" in chunk for chunk in chunks)
    # Eight at once: the router's queue lengths spread them over both replicas.
    assert len({replica for replica, _ in served}) == 2


def test_the_openai_client_works_unchanged_through_serve(replicas: Server) -> None:
    client = openai.OpenAI(base_url=replicas.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        stream=True,
    )
    ends = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert ends in (["length"], ["stop"])


def test_a_shared_system_prompt_stays_on_the_replica_that_caches_it(replicas: Server) -> None:
    def ask(system: str, user: str) -> tuple[str, int]:
        body = {
            "model": "tiny",
            "system": system,
            "messages": [{"role": "user", "content": user}],
            "max_tokens": 4,
        }
        response = httpx.post(replicas.url + "/v1/messages", json=body, timeout=120)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        return response.headers["x-troupe-replica"], usage["cache_read_input_tokens"]

    for system in (SYSTEM, SYSTEM.replace("Lyon", "Nantes").upper()):
        answers = [ask(system, f"Customer question number {n}") for n in range(5)]
        assert len({replica for replica, _ in answers}) == 1, answers
        # Every request after the first reuses the system prompt from that replica's cache.
        assert all(cached > 0 for _, cached in answers[1:]), answers


def test_problems_and_request_ids_survive_the_proxy(replicas: Server) -> None:
    response = httpx.post(
        replicas.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": []},
        headers={"x-request-id": "ray-test-1"},
        timeout=60,
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get_list("x-request-id") == ["ray-test-1"]
    assert response.json()["request_id"] == "ray-test-1"
    anthropic = httpx.post(replicas.url + "/v1/messages", json={"model": "tiny"}, timeout=60)
    assert anthropic.status_code == 400  # Anthropic's status for an invalid body
    assert anthropic.json()["type"] == "error"
    too_big = httpx.post(
        replicas.url + "/v1/chat/completions", content=b"x" * (2 * 1024 * 1024), timeout=60
    )
    assert too_big.status_code == 413
    assert too_big.json()["type"].endswith("/body-too-large")


def test_readiness_and_metrics_answer_through_the_proxy(replicas: Server) -> None:
    ready = httpx.get(replicas.url + "/health/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["model"] == "tiny"
    metrics = httpx.get(replicas.url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "troupe_" in metrics.text


def chat_body(index: int, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Tell story number {index}, slowly."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logit_bias": {str(EOS): -100},
    }
    if stream:
        body |= {"stream": True, "logprobs": True, "stream_options": {"include_usage": True}}
    return body


def model_replica_pids() -> list[int]:
    return sorted(
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if MODEL_REPLICA in " ".join(process.info["cmdline"] or ())
    )


async def test_a_replica_killed_under_eight_streams_loses_none_of_them(replicas: Server) -> None:
    # Last in the module: it kills one of the replicas the tests above share.
    pids = model_replica_pids()
    assert len(pids) == 2, pids
    streams = [ChatStream(started_at=20) for _ in range(STREAMS)]
    async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:
        for index, into in enumerate(streams):
            tg.start_soon(into.read, client, replicas.url, chat_body(index, stream=True))
        with anyio.fail_after(120):
            for into in streams:
                await into.started.wait()
        assert len({into.replica for into in streams}) == 2, "both replicas serve streams"
        assert not any(into.done for into in streams), "a stream ended before the kill"
        psutil.Process(pids[0]).kill()

    for into in streams:
        assert into.errors == [] and into.done
        assert into.finish == "length"
        assert into.tokens == MAX_TOKENS  # none twice, none missing
        assert into.usage is not None and into.usage["completion_tokens"] == MAX_TOKENS
    resumed = re.findall(r"resumed a stream on replica \S+ after (\d+) tokens", replicas.log())
    assert resumed and all(int(tokens) >= 20 for tokens in resumed), replicas.log()[-4000:]

    async with httpx.AsyncClient(timeout=120) as client:
        for index, into in enumerate(streams):
            uncut = await client.post(
                replicas.url + "/v1/chat/completions", json=chat_body(index, stream=False)
            )
            assert uncut.json()["choices"][0]["message"]["content"] == into.text, index

    known = {into.replica for into in streams}
    assert answered_by_a_new_replica(replicas.url, known)


def answered_by_a_new_replica(url: str, known: set[str]) -> bool:
    """Wait until a replica Serve started in place of the killed one answers."""
    deadline = time.monotonic() + RAY_STARTUP
    index = 0
    while time.monotonic() < deadline:
        index += 1  # a prompt of its own each time: no affinity, the least loaded replica
        body = chat_body(1000 + index, stream=False) | {"max_tokens": 2}
        answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        if answer.headers["x-troupe-replica"] not in known:
            return True
        time.sleep(0.2)  # a replica Serve is starting: no event to wait on
    return False
