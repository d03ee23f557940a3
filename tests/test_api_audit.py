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
    with running_server(model_dir, tmp_path, *args) as srv:
        body = {"model": model_name(srv), "prompt": SECRET_PROMPT, "max_tokens": 4}
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200
        too_long = {"model": model_name(srv), "prompt": [5] * 4096, "max_tokens": 4}
        refused = httpx.post(srv.url + "/v1/completions", json=too_long, timeout=60)
        assert_problem(refused, 400)  # longer than the context window
        assert_problem(httpx.get(srv.url + "/admin/audit-logs", timeout=10), 401)
        assert srv.stop() == 0  # the drain writes what is queued
    with running_server(model_dir, tmp_path, *args) as srv:
        rows = httpx.get(srv.url + "/admin/audit-logs", headers=ADMIN, timeout=10).json()["data"]
        assert sorted(row["status"] for row in rows) == [200, 400]
        ok = next(row for row in rows if row["status"] == 200)
        assert (ok["endpoint"], ok["completion_tokens"], ok["finish_reason"]) == (
            "completions",
            4,
            "length",
        )
        failed = httpx.get(srv.url + "/admin/audit-logs?status=400", headers=ADMIN, timeout=10)
        assert [row["error_type"] for row in failed.json()["data"]] == ["prompt_too_long"]
        stats = httpx.get(srv.url + "/admin/audit-logs/stats", headers=ADMIN, timeout=10).json()
        assert stats["data"][0]["count"] == 2
        assert stats["data"][0]["error_rate"] == 0.5
    dump = "\n".join(sqlite3.connect(audit).iterdump())
    assert SECRET_PROMPT not in dump
    assert "admin-secret" not in dump
