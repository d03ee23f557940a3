"""``troupe serve --ray``: a replica killed under eight streams, and every stream finished.

Eight greedy streams run on two replicas; once each has received tokens, one
replica's process is killed (``SIGKILL``: nothing of it cleans up). The streams
it served are resumed on the other replica from the tokens their clients had
(see :mod:`api.serving.resumption`): every client gets a whole answer, token for token
the one an uncut request gets, with no error event and usage counted across
both replicas; and Serve starts a replica in place of the killed one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from tests.chat_streams import ChatStream
from tests.server import Server, running_server
from tests.test_ray_replicas import RAY_STARTUP, wait_announced

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
STREAMS = 8
MAX_TOKENS = 500
EOS = 2
"""The tiny model's end-of-text token, kept out so that every answer lasts ``MAX_TOKENS``."""
MODEL_REPLICA = "ServeReplica:mlx-troupe:troupe-model"
"""The process title of a model replica (Ray names its actor processes ``ray::<actor>``)."""


@pytest.fixture
def anyio_backend() -> str:
    """The client's loop; the server is another process either way."""
    return "asyncio"


@pytest.fixture(scope="module")
def replicas(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``troupe serve --ray --replicas 2`` on the tiny model."""
    tmp = tmp_path_factory.mktemp("ray-loss")
    args = ("--ray", "--replicas", "2", "--replica-cpus", "0.5")
    with running_server(model_dir, tmp, *args, startup_timeout=RAY_STARTUP) as server:
        wait_announced(server)
        yield server


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
