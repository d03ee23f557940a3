"""End to end: a non-streaming client that goes away cancels its generation."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, running_server
from tests.test_api_limits import long_chat, wait_until_engine_holds
from tests.test_api_metrics import eventually, metrics_json, metrics_text, samples, value

pytestmark = pytest.mark.timeout(120)

ADMIN = {"authorization": "Bearer admin-secret"}
TOKENS = 1900
"""The abandoned request's max_tokens: several seconds of decoding here."""
YARDSTICK = 300
"""Tokens of a request timed first: the engine must let go sooner than it decodes that many."""


def chat(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def disconnects(server: Server) -> int:
    cancelled: dict[str, int] = metrics_json(server, "?category=requests")["requests"]["cancelled"]
    return cancelled.get("disconnect", 0)


def audited_499s(server: Server) -> list[dict[str, Any]]:
    response = httpx.get(server.url + "/admin/audit-logs?status=499", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def test_a_non_streaming_client_that_disconnects_cancels_its_generation(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ["--audit-path", str(tmp_path / "audit.sqlite"), "--admin-key", "admin-secret"]
    with running_server(model_dir, tmp_path, *args) as srv:
        # The same request, shorter, timed end to end on this machine as it is
        # loaded now: a yardstick that slows down with the engine.
        started = time.monotonic()
        timed = chat(srv, long_chat(srv, YARDSTICK))
        yardstick = time.monotonic() - started
        assert timed.status_code == 200, timed.text
        assert timed.json()["usage"]["completion_tokens"] == YARDSTICK
        body = json.dumps({**long_chat(srv, TOKENS), "stream": False}).encode()
        port = int(srv.url.rsplit(":", 1)[1])
        # A raw socket: closing it is a disconnect and nothing else (no client
        # timeout, no retry, no half-read response).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            wait_until_engine_holds(srv, 1)
        closed = time.monotonic()
        wait_until_engine_holds(srv, 0)
        freed_after = time.monotonic() - closed
        # Left to run, it would decode TOKENS tokens; freed before YARDSTICK more.
        assert freed_after < yardstick, (freed_after, yardstick)
        eventually(lambda: disconnects(srv) == 1)
        assert value(samples(metrics_text(srv)), "troupe_requests_total", status="499") == 1
        # The audit writer commits in batches (a second at most): poll for the row.
        eventually(lambda: len(audited_499s(srv)) == 1)
        (row,) = audited_499s(srv)
        assert (row["finish_reason"], row["error_type"]) == ("cancelled", "client_disconnect")
        assert row["completion_tokens"] < TOKENS
