"""Memory-aware admission through the server: a small budget, long requests, 429 before prefill."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.model.loader import LoadedModel
from actors.model.weights import kv_bytes_per_token, weight_bytes
from tests.server import Server, running_server
from tests.test_api import assert_problem, model_name
from tests.test_api_limits import long_chat
from tests.test_api_metrics import eventually, metrics_text, samples, value

pytestmark = pytest.mark.timeout(180)
ADMIN = {"authorization": "Bearer admin-secret"}
ROOM = 1_500
"""KV tokens the budget leaves beside the weights: one long request fits, two do not."""


@pytest.fixture(scope="module")
def server(
    model_dir: Path, loaded_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    room = ROOM * kv_bytes_per_token(loaded_model.model)
    budget = weight_bytes(loaded_model.model) + room
    args = ("--fault-injection", "--admin-key", "admin-secret", "--memory-budget", str(budget))
    with running_server(model_dir, tmp_path_factory.mktemp("memory"), *args) as running:
        yield running


def intake(server: Server) -> dict[str, Any]:
    figures: dict[str, Any] = httpx.get(server.url + "/v1/supervisor", timeout=10).json()["intake"]
    return figures


def chat(server: Server, max_tokens: int) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions", json=long_chat(server, max_tokens), timeout=120
    )


def test_a_long_request_that_would_not_fit_beside_another_is_shed(server: Server) -> None:
    # One request end to end first: the engine is up, so intake has its memory figures.
    assert chat(server, 4).status_code == 200
    # Held long enough to ask twice more; clearing the fault would wait for it anyway.
    slow = {"kind": "slow_actor", "actor": "generation", "seconds": 8, "messages": 1}
    assert httpx.post(server.url + "/admin/faults", json=slow, headers=ADMIN, timeout=10).is_success
    first: list[httpx.Response] = []
    held = threading.Thread(target=lambda: first.append(chat(server, 1_000)))
    held.start()
    try:
        # Admitted and held behind the slowed generation actor: booked, not finished.
        eventually(lambda: intake(server)["in_flight"] == 1)
        assert intake(server)["memory_left_bytes"] is not None
        refused = chat(server, 1_000)
        problem = assert_problem(refused, 429)
        assert problem["type"] == "https://mlx-troupe.dev/problems/memory-full"
        assert "memory budget" in str(problem["detail"])
        assert int(refused.headers["retry-after"]) >= 1
        parsed = samples(metrics_text(server))
        shed = value(parsed, "troupe_requests_shed_total", reason="memory_full")
        assert shed == 1
    finally:
        held.join(120)
        httpx.delete(server.url + "/admin/faults", headers=ADMIN, timeout=30)
    assert first[0].status_code == 200
    # With the first one done, the same long request fits again.
    assert chat(server, 1_000).status_code == 200
    assert model_name(server)


def test_the_thread_engine_tells_intake_its_memory_too(
    model_dir: Path, loaded_model: LoadedModel, tmp_path: Path
) -> None:
    room = ROOM * kv_bytes_per_token(loaded_model.model)
    budget = str(weight_bytes(loaded_model.model) + room)
    with running_server(
        model_dir, tmp_path, "--engine", "thread", "--memory-budget", budget
    ) as thread_server:
        eventually(lambda: intake(thread_server)["memory_left_bytes"] is not None)
        assert 0 < intake(thread_server)["memory_left_bytes"] <= room
        assert chat(thread_server, 4).status_code == 200
