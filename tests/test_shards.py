"""``troupe serve --shards 2``: one model split over two processes, on an ``mx.distributed`` ring.

The engine process (rank 0) starts the other rank itself, and both run one
engine in lockstep (:mod:`actors.generation.engine.lockstep`). A split server must
answer exactly as an unsplit one (greedy decoding), and a rank that dies must
take its group down and bring a new one up, while the streams in flight go on
where they were (the generation actor resumes them on the new group).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from tests.chat_streams import ChatStream
from tests.server import REPO, Server, free_port, running_server

pytestmark = pytest.mark.timeout(240)
EOS = 2
"""The tiny model's end-of-text token, kept out so that every answer lasts ``max_tokens``."""
FOLLOWER = "actors.generation.shards.follower"


@pytest.fixture(scope="module")
def split(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The ring's ports from this worker's share, never the fixed default that
    # another process of a parallel run could be handed.
    ring = ("--shards", "2", "--shard-port", str(consecutive_free_ports(2)))
    with running_server(model_dir, tmp_path_factory.mktemp("split"), *ring) as server:
        yield server


@pytest.fixture(scope="module")
def whole(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("whole")) as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_body(user: str, max_tokens: int, **extra: object) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": {str(EOS): -100},
        **extra,
    }


def answer(server: Server, body: dict[str, object]) -> str:
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def followers(server: Server) -> list[int]:
    """The follower ranks started under ``server`` (children of its engine process)."""
    return [
        child.pid
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if FOLLOWER in " ".join(child.cmdline())
    ]


def test_a_split_model_answers_as_one_process_does(split: Server, whole: Server) -> None:
    assert len(followers(split)) == 1
    assert followers(whole) == []
    for user in ("Hello there", "Tell me about the sea.", "Quelle heure est-il ?"):
        body = chat_body(user, 48)
        assert answer(split, body) == answer(whole, body), user
    # Sampling with a seed draws the same on every rank, so it matches too.
    seeded = chat_body("A seeded story", 32, temperature=0.9, seed=7)
    assert answer(split, seeded) == answer(whole, seeded)


async def test_a_killed_rank_restarts_the_group_and_the_streams_go_on(
    split: Server, whole: Server
) -> None:
    (follower,) = followers(split)
    users = [f"Stream {index}: tell a long story." for index in range(4)]
    streams = [ChatStream() for _ in users]
    async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:
        for user, into in zip(users, streams, strict=True):
            body = chat_body(user, 300, stream=True, logprobs=True)
            tg.start_soon(into.read, client, split.url, body)
        with anyio.fail_after(120):
            for into in streams:
                await into.started.wait()
        psutil.Process(follower).kill()

    assert "the group restarts" in split.log()
    for user, into in zip(users, streams, strict=True):
        assert into.errors == [] and into.finish == "length"
        assert into.tokens == 300  # resumed on the new group: none twice, none missing
        assert into.text == answer(whole, chat_body(user, 300)), user
    (new,) = followers(split)
    assert new != follower
    assert answer(split, chat_body("Hello there", 8)) == answer(whole, chat_body("Hello there", 8))


def test_a_model_that_cannot_be_split_so_is_refused_at_start(model_dir: Path) -> None:
    command = [sys.executable, "-m", "api.cli.main", "serve", "--model", str(model_dir)]
    started = subprocess.run(
        [*command, "--port", str(free_port()), "--shards", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    assert started.returncode == 1
    assert "num_attention_heads (4) is not a multiple of 3" in started.stderr + started.stdout


def consecutive_free_ports(count: int) -> int:
    """A port with the ``count - 1`` after it free too (the ring's ``shard_port``)."""
    while True:
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        else:
            return first
        finally:
            for sock in sockets:
                sock.close()


def test_ranks_on_other_hosts_are_started_over_ssh(
    model_dir: Path, tmp_path: Path, whole: Server
) -> None:
    """Both "hosts" are this machine; ``ssh`` is a stand-in that runs the command here."""
    ssh_log = tmp_path / "ssh.log"
    env = {
        "PATH": f"{REPO / 'tests' / 'fake_ssh'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SSH_LOG": str(ssh_log),
    }
    hosts = ("--shard-hosts", "127.0.0.1,127.0.0.1")
    port = ("--shard-port", str(consecutive_free_ports(2)))
    with running_server(model_dir, tmp_path, "--shards", "2", *hosts, *port, env=env) as split:
        body = chat_body("Hello over the network", 24)
        assert answer(split, body) == answer(whole, body)
    host, script = ssh_log.read_text().strip().split(" ", 1)
    assert host == "127.0.0.1"
    assert "MLX_RANK=1" in script and FOLLOWER in script
