"""End to end: the audit log of a real server, read back by the admin, kept across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.server import running_server
from tests.test_api import assert_problem, model_name

pytestmark = pytest.mark.timeout(180)

SECRET_PROMPT = "my-very-private-prompt-text"
ADMIN = {"authorization": "Bearer admin-secret"}


def test_audit_rows_have_metadata_only_and_survive_a_restart(
    model_dir: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.sqlite"
    args = ["--audit-path", str(audit), "--admin-key", "admin-secret"]
    args += ["--fault-injection", "--completion-timeout", "3"]
    with running_server(model_dir, tmp_path, *args) as srv:
        model = model_name(srv)
        # Sampled, but never a special token (end of text): it runs to its 4 tokens.
        no_eos = {str(token): -100 for token in range(7)}
        body = {"model": model, "prompt": SECRET_PROMPT, "max_tokens": 4, "logit_bias": no_eos}
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200
        too_long = {"model": model, "prompt": [5] * 4096, "max_tokens": 4}
        refused = httpx.post(srv.url + "/v1/completions", json=too_long, timeout=60)
        assert_problem(refused, 400)  # longer than the context window
        unknown = {"model": "nope", "prompt": SECRET_PROMPT}
        assert_problem(httpx.post(srv.url + "/v1/completions", json=unknown, timeout=60), 404)
        # A client that goes away after the first tokens: cancelled.
        endless = {**body, "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=endless, timeout=60) as stream:
            next(line for line in stream.iter_lines() if line.startswith("data: {"))
        # Held in the generation actor's mailbox past the 3 s deadline: timed out.
        slow = {"kind": "slow_actor", "actor": "generation", "seconds": 6.0, "messages": 1}
        assert httpx.post(
            srv.url + "/admin/faults", json=slow, headers=ADMIN, timeout=10
        ).is_success
        assert_problem(httpx.post(srv.url + "/v1/completions", json=body, timeout=60), 504)
        assert_problem(httpx.get(srv.url + "/admin/audit-logs", timeout=10), 401)
        assert srv.stop() == 0  # the drain writes what is queued
    with running_server(model_dir, tmp_path, *args) as srv:
        rows = httpx.get(srv.url + "/admin/audit-logs", headers=ADMIN, timeout=10).json()["data"]
        by_status = {row["status"]: row for row in rows}
        assert sorted(by_status) == [200, 400, 404, 499, 504]
        outcomes = {
            status: (row["endpoint"], row["finish_reason"], row["error_type"])
            for status, row in by_status.items()
        }
        assert outcomes == {
            200: ("completions", "length", None),
            400: ("completions", None, "prompt_too_long"),
            404: ("completions", None, "model_not_found"),
            499: ("completions", "cancelled", "client_disconnect"),
            504: ("completions", "cancelled", "deadline_exceeded"),
        }
        assert by_status[200]["completion_tokens"] == 4
        assert by_status[400]["prompt_tokens"] == 4096
        assert by_status[499]["completion_tokens"] >= 1 and by_status[499]["ttft_ms"] > 0
        assert by_status[504]["duration_ms"] >= 3000 and by_status[504]["ttft_ms"] is None
        failed = httpx.get(srv.url + "/admin/audit-logs?status=400", headers=ADMIN, timeout=10)
        assert [row["error_type"] for row in failed.json()["data"]] == ["prompt_too_long"]
        stats = httpx.get(srv.url + "/admin/audit-logs/stats", headers=ADMIN, timeout=10).json()
        assert (stats["data"][0]["count"], stats["data"][0]["errors"]) == (5, 4)
        assert stats["data"][0]["error_rate"] == 0.8
    dump = "\n".join(sqlite3.connect(audit).iterdump())
    assert SECRET_PROMPT not in dump
    assert "admin-secret" not in dump
