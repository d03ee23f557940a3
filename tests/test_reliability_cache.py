"""Reliability: prefix-cache faults, damaged cache files, and memory pressure.

Scenario 3: five cache faults open the cache's breaker; requests are served
uncached, ``/health`` says degraded and ``troupe status`` shows the breaker;
after the cool-down, successful probes close it again. The two halves run on
two servers, one whose cool-down never ends and one with none, so that no
assertion depends on how fast the machine is. Scenario 4: damaged
persisted entries at startup are dropped one by one and the server starts.
Scenario 5: simulated memory pressure sheds the cache and answers new requests
with 429 and Retry-After until it falls; nothing crashes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.drills import DRILL_FLAGS, actor, drill, model_name, supervisor, troupe_status
from tests.server import Server, running_server

pytestmark = pytest.mark.timeout(240)

PROMPTS = ("The river runs", "A mountain stands", "Three birds sing")


def complete(server: Server, prompt: str, max_tokens: int = 4) -> httpx.Response:
    """A short non-streaming text completion."""
    body = {"model": model_name(server), "prompt": prompt, "max_tokens": max_tokens}
    return httpx.post(server.url + "/v1/completions", json=body, timeout=60)


def breaker(server: Server) -> str:
    """The cache breaker's state, as ``/v1/supervisor`` reports it."""
    state: str = supervisor(server)["cache"]["breaker"]["state"]
    return state


def health(server: Server) -> dict[str, object]:
    """``GET /health`` (200 unless unhealthy)."""
    response = httpx.get(server.url + "/health", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def open_the_breaker(server: Server) -> int:
    """Arm five cache faults and send requests until they open the breaker; how many."""
    assert drill(server, {"kind": "cache_faults", "count": 5})["pending"] == 5
    served_while_failing = 0
    while breaker(server) == "closed":
        assert complete(server, PROMPTS[served_while_failing % 3]).status_code == 200
        served_while_failing += 1
        assert served_while_failing <= 5, "five faults must open the breaker"
    return served_while_failing


def test_cache_faults_open_the_breaker_and_the_server_degrades(
    model_dir: Path, tmp_path: Path, figures: dict[str, object]
) -> None:
    # A cool-down no test outlasts: the breaker stays open however slow the machine.
    flags = (*DRILL_FLAGS, "--cache-breaker-cooldown", "3600")
    with running_server(model_dir, tmp_path, *flags) as server:
        figures.update(requests_while_failing=open_the_breaker(server))
        assert breaker(server) == "open"
        report = health(server)
        assert report["status"] == "degraded"
        assert report["actors"] == {**report["actors"], "kvcache": "degraded"}  # type: ignore[dict-item]
        assert "cache breaker: open" in troupe_status(server)
        assert complete(server, "Served without the cache").status_code == 200
        assert breaker(server) == "open"
        generation = actor(supervisor(server), "generation")
    assert generation["restarts_total"] == 0


def test_after_the_cool_down_clean_probes_close_the_breaker(
    model_dir: Path, tmp_path: Path, figures: dict[str, object]
) -> None:
    # No cool-down: the first request after the breaker opens is already a probe,
    # so no step of this test waits for time to pass.
    flags = (*DRILL_FLAGS, "--cache-breaker-cooldown", "0", "--cache-breaker-successes", "4")
    with running_server(model_dir, tmp_path, *flags) as server:
        open_the_breaker(server)
        # One request at a time probes the cache; four clean operations in a row
        # close the breaker.
        probes = 0
        while breaker(server) != "closed":
            assert complete(server, PROMPTS[probes % 3]).status_code == 200
            probes += 1
            assert probes <= 200, "the breaker never closed again"
        assert health(server)["status"] == "healthy"
        generation = actor(supervisor(server), "generation")
    assert probes >= 1  # four clean cache operations: lookups and inserts
    assert generation["restarts_total"] == 0
    figures.update(requests_until_closed=probes)


def test_damaged_cache_files_are_dropped_one_by_one_at_startup(
    model_dir: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "kv"
    flags = (*DRILL_FLAGS, "--cache-dir", str(cache_dir))
    with running_server(model_dir, tmp_path, *flags) as server:
        for prompt in PROMPTS:
            assert complete(server, prompt).status_code == 200
        assert supervisor(server)["cache"]["entries"] == len(PROMPTS)
        # The drill saves the cache and tampers with one file; a kill (no clean
        # shutdown, so no fresh save) leaves it damaged on disk.
        assert drill(server, {"kind": "corrupt_cache", "count": 1})["corrupted"] == 1
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
    files = sorted(cache_dir.glob("*.safetensors"))
    assert len(files) == len(PROMPTS)
    os.truncate(files[-1], files[-1].stat().st_size // 2)  # a copy cut short
    with running_server(model_dir, tmp_path, *flags) as server:
        assert supervisor(server)["cache"]["entries"] == len(PROMPTS) - 2
        assert complete(server, PROMPTS[0]).status_code == 200
        log = server.log()
    assert "restored 1 entries (2 bad files dropped" in log
    assert len(list(cache_dir.glob("*.safetensors"))) == len(PROMPTS) - 2 + 1  # + the new one


def test_memory_pressure_sheds_the_cache_and_new_requests_until_it_falls(
    model_dir: Path, tmp_path: Path
) -> None:
    with running_server(model_dir, tmp_path, *DRILL_FLAGS) as server:
        for prompt in PROMPTS:
            assert complete(server, prompt).status_code == 200
        assert supervisor(server)["cache"]["entries"] == len(PROMPTS)
        relieved = drill(server, {"kind": "memory_pressure", "active": True})
        assert relieved == {"kind": "memory_pressure", "under_pressure": True, "evicted": 3}
        assert supervisor(server)["cache"]["entries"] == 0
        for _ in range(3):
            shed = complete(server, "One more, please")
            assert shed.status_code == 429, shed.text
            assert shed.headers["content-type"] == "application/problem+json"
            assert int(shed.headers["retry-after"]) >= 1
            assert shed.json()["type"].endswith("/pressure")
        assert httpx.get(server.url + "/health/live", timeout=10).status_code == 200
        over = drill(server, {"kind": "memory_pressure", "active": False})
        assert over["under_pressure"] is False
        assert complete(server, "One more, please").status_code == 200
        status = supervisor(server)
    for name in ("generation", "kvcache", "intake"):
        assert actor(status, name)["restarts_total"] == 0
