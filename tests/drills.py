"""Talking to a running server's fault switch and status, for the reliability tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from tests.server import REPO, Server

ADMIN_KEY = "admin-key-for-drills"
DRILL_FLAGS = ("--fault-injection", "--admin-key", ADMIN_KEY)
"""Flags that turn the fault switch on, behind a known admin key."""
POLL = 0.05
"""Seconds between looks at another process's state (there is no event to wait on)."""


def drill(server: Server, fault: dict[str, Any]) -> dict[str, Any]:
    """``POST /admin/faults``; the answer's JSON (asserting success)."""
    response = httpx.post(
        server.url + "/admin/faults",
        json=fault,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def supervisor(server: Server) -> dict[str, Any]:
    """``GET /v1/supervisor``."""
    response = httpx.get(server.url + "/v1/supervisor", timeout=10)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def actor(status: dict[str, Any], name: str) -> dict[str, Any]:
    """One actor's node in a ``/v1/supervisor`` answer."""
    pending = [status["root"]]
    while pending:
        node = pending.pop()
        if node["name"] == name and "children" not in node:
            found: dict[str, Any] = node
            return found
        pending.extend(node.get("children", []))
    raise AssertionError(f"no actor {name!r} in the tree")


def troupe_status(server: Server) -> str:
    """What ``troupe status`` prints for the server (asserting it exits 0)."""
    result = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "status", "--url", server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def model_name(server: Server) -> str:
    """The id the server serves."""
    name: str = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    return name


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Look again until ``check`` holds; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - the state is another process's
            await anyio.sleep(POLL)


def open_slow_request(
    server: Server, path: str, declared: int, sent: bytes, extra_headers: str = ""
) -> socket.socket:
    """Start a POST that declares ``declared`` body bytes and sends only ``sent`` of them."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {declared}\r\n{extra_headers}\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def read_status(sock: socket.socket) -> int:
    """The status code of the HTTP response arriving on ``sock``."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])
