"""Reliability: SIGTERM while 16 streams are running (scenario 6).

The server stops admitting (new requests get 503, readiness is false), lets
every stream in flight finish within the drain deadline, writes the audit rows
of all requests, and exits 0.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest

from tests.drills import model_name, until
from tests.load import Result, chat_body, stream_chat
from tests.server import running_server

pytestmark = pytest.mark.timeout(240)

STREAMS = 16
NO_EOS = {str(token): -100 for token in range(7)}


@pytest.fixture
def anyio_backend() -> str:
    """The server is a separate process; one client backend is enough."""
    return "asyncio"


async def test_sigterm_under_load_finishes_every_stream_and_audits_every_request(
    model_dir: Path, tmp_path: Path, figures: dict[str, object]
) -> None:
    audit = tmp_path / "audit.db"
    flags = ("--audit-path", str(audit), "--drain-timeout", "120")
    with running_server(model_dir, tmp_path, *flags) as server:
        model = model_name(server)
        body = chat_body(model, "Tell me a long story", 64, logit_bias=NO_EOS)
        results: list[Result] = []
        started = [anyio.Event() for _ in range(STREAMS)]

        async def one(http: httpx.AsyncClient, n: int) -> None:
            results.append(await stream_chat(http, body, f"drain-{n}", started[n]))

        limits = httpx.Limits(max_connections=STREAMS + 2)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http,
            anyio.create_task_group() as tg,
        ):
            for n in range(STREAMS):
                tg.start_soon(one, http, n)
            for event in started:
                await event.wait()
            server.process.send_signal(signal.SIGTERM)
            await until(lambda: _not_ready(http))
            refused = await http.post(
                "/v1/chat/completions",
                json={**body, "stream": False},
                headers={"x-request-id": "drain-refused"},
            )
        code = server.process.wait(120)

    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert code == 0
    assert sorted(r.kind for r in results) == ["completed"] * STREAMS
    assert {r.finish_reason for r in results} == {"length"}
    with sqlite3.connect(audit) as db:
        rows = dict(db.execute("SELECT request_id, status FROM audit_log").fetchall())
    assert {f"drain-{n}": 200 for n in range(STREAMS)}.items() <= rows.items()
    assert rows.get("drain-refused") == 503
    figures.update(streams=STREAMS, drained=len(results), audit_rows=len(rows), exit_status=code)


async def _not_ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/health/ready")).status_code == 503
