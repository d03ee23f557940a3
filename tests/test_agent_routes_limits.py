"""Messages, Responses and embeddings under deadlines and disconnects, end to end.

Each goes through intake, the deadline and the disconnect watcher exactly as
chat does; these tests check that they do, from the outside: the answer, the
engine letting go of the work, and the audit row.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, running_server
from tests.test_api import assert_problem, model_name
from tests.test_api_limits import wait_until_engine_holds
from tests.test_api_metrics import eventually

pytestmark = pytest.mark.timeout(180)

ADMIN = {"authorization": "Bearer admin-secret"}
EMBEDDINGS_TIMEOUT = 1.0
LONG = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
}
"""A schema whose shortest answer takes thousands of tokens: a stream that will not end soon."""


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("agent-limits")
    args = [
        "--fault-injection",
        "--admin-key",
        "admin-secret",
        "--audit-path",
        str(tmp / "audit.sqlite"),
        "--embeddings-timeout",
        str(EMBEDDINGS_TIMEOUT),
    ]
    with running_server(model_dir, tmp, *args) as running:
        yield running


def slow_generation(server: Server, seconds: float) -> None:
    """Hold the generation actor's next message for ``seconds``: requests queue behind it."""
    slow = {"kind": "slow_actor", "actor": "generation", "seconds": seconds, "messages": 1}
    response = httpx.post(server.url + "/admin/faults", json=slow, headers=ADMIN, timeout=10)
    assert response.is_success, response.text


def audit_rows(server: Server, status: int) -> list[dict[str, Any]]:
    response = httpx.get(
        server.url + f"/admin/audit-logs?status={status}", headers=ADMIN, timeout=10
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def test_the_embeddings_deadline_is_honoured_while_queued(server: Server) -> None:
    body = {"model": model_name(server), "input": ["held in the queue"]}
    slow_generation(server, 4.0)
    started = time.monotonic()
    late = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
    waited = time.monotonic() - started
    problem = assert_problem(late, 504)
    assert problem["type"] == "https://mlx-troupe.dev/problems/deadline-exceeded"
    assert EMBEDDINGS_TIMEOUT <= waited < 3.5, waited  # at its own deadline, not the slow-down's
    eventually(lambda: any(row["endpoint"] == "embeddings" for row in audit_rows(server, 504)))
    (row,) = [row for row in audit_rows(server, 504) if row["endpoint"] == "embeddings"]
    assert row["error_type"] == "deadline_exceeded"
    httpx.delete(server.url + "/admin/faults", headers=ADMIN, timeout=10)
    # Once the actor takes messages again, the same request is answered.
    eventually(
        lambda: httpx.post(server.url + "/v1/embeddings", json=body, timeout=60).status_code == 200
    )


def open_and_drop_stream(server: Server, path: str, body: dict[str, Any]) -> None:
    """Start a stream, read its first content event, and go away."""
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept alive: leaving it early would close the connection
        line = ""
        while not ("delta" in line and line.startswith("data: ")):
            line = next(lines)
        wait_until_engine_holds(server, 1)
    wait_until_engine_holds(server, 0)  # the engine let go without finishing


def test_a_disconnect_cancels_each_kind_of_request(server: Server) -> None:
    model = model_name(server)
    open_and_drop_stream(
        server,
        "/v1/messages",
        {
            "model": model,
            "max_tokens": 8000,
            "stream": True,
            "messages": [{"role": "user", "content": "A long story"}],
            "output_config": {"format": {"type": "json_schema", "schema": LONG}},
        },
    )
    open_and_drop_stream(
        server,
        "/v1/responses",
        {
            "model": model,
            "input": "A long story",
            "stream": True,
            "max_output_tokens": 8000,
            "text": {"format": {"type": "json_schema", "name": "story", "schema": LONG}},
        },
    )
    # An embedding is done in one pass: held in the queue, it is still waiting
    # when its client goes away.
    slow_generation(server, 4.0)
    body = json.dumps({"model": model, "input": "never answered"}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        # hypercorn answers 100 Continue once the app has the request: only then
        # is going away a disconnect the server sees (not a connection it never served).
        assert sock.recv(1024).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
    eventually(lambda: len(audit_rows(server, 499)) == 3)
    rows = audit_rows(server, 499)
    assert sorted(row["endpoint"] for row in rows) == ["embeddings", "messages", "responses"]
    for row in rows:
        assert (row["finish_reason"], row["error_type"]) == ("cancelled", "client_disconnect")
    httpx.delete(server.url + "/admin/faults", headers=ADMIN, timeout=10)
