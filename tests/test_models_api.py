"""Several models in one server: on-demand loads, LRU eviction, keep-alive, a bad model isolated.

Real servers with real engine processes, one per loaded model; every model is
the session's tiny generated model (under several names, and once with its
weights broken), so the budget can be sized to hold exactly two of them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, running_server
from tests.test_api import assert_problem
from tests.test_api_metrics import eventually, metrics_text, samples, value

pytestmark = pytest.mark.timeout(240)


def weight_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def broken_copy(model_dir: Path, where: Path) -> Path:
    """The model with its weights cut short: its tokenizer loads, its weights do not."""
    broken = where / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return broken


def write_models(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def chat(server: Server, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "temperature": 0,
            **extra,
        },
        timeout=120,
    )


def model_states(server: Server) -> dict[str, dict[str, Any]]:
    body = httpx.get(server.url + "/v1/supervisor", timeout=10).json()
    return {model["name"]: model for model in body["models"]["models"]}


def phase(server: Server, name: str) -> str:
    return str(model_states(server)[name]["phase"])


@pytest.fixture(scope="module")
def several(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("several")
    budget = int(weight_bytes(model_dir) * 2.5)  # room for two models, not three
    hollow = tmp / "hollow"  # not even a tokenizer
    hollow.mkdir()
    models = write_models(
        tmp / "models.toml",
        f"""
memory_budget = {budget}
keep_alive = -1

[[model]]
name = "alpha"
path = "{model_dir}"
weights = "quantized"
preload = true

[[model]]
name = "beta"
path = "{model_dir}"
weights = "quantized"

[[model]]
name = "gamma"
path = "{model_dir}"
weights = "quantized"

[[model]]
name = "broken"
path = "{broken_copy(model_dir, tmp)}"
weights = "quantized"

[[model]]
name = "hollow"
path = "{hollow}"
""",
    )
    args = ("--models", str(models), "--audit-path", str(tmp / "audit.db"), "--admin-key", "k")
    with running_server(None, tmp, *args) as server:
        yield server


def test_models_are_listed_loaded_on_demand_and_evicted_least_recently_used(
    several: Server,
) -> None:
    listed = httpx.get(several.url + "/v1/models", timeout=10).json()
    assert [card["id"] for card in listed["data"]] == ["alpha", "beta", "gamma", "broken", "hollow"]
    assert phase(several, "alpha") == "loaded"  # preloaded
    assert phase(several, "beta") == "unloaded"

    # Two models serve at once.
    for name in ("alpha", "beta"):
        answered = chat(several, name)
        assert answered.status_code == 200, answered.text
        assert answered.json()["model"] == name
    assert phase(several, "alpha") == "loaded"
    assert phase(several, "beta") == "loaded"

    # A third does not fit: the least recently used idle one (alpha) makes room.
    answered = chat(several, "gamma")
    assert answered.status_code == 200, answered.text
    eventually(lambda: phase(several, "alpha") == "unloaded")
    states = model_states(several)
    assert states["beta"]["phase"] == "loaded"
    assert states["gamma"]["phase"] == "loaded"
    assert states["alpha"]["unloads"] == 1

    # Asked again, alpha is loaded again (and beta, now the least recent, goes).
    answered = chat(several, "alpha", stream=True)
    assert answered.status_code == 200, answered.text
    eventually(lambda: phase(several, "beta") == "unloaded")
    assert model_states(several)["alpha"]["loads"] == 2


def test_a_model_that_fails_to_load_answers_its_own_requests_and_the_others_serve(
    several: Server,
) -> None:
    failed = chat(several, "broken")
    problem = assert_problem(failed, 503)
    assert str(problem["type"]).endswith("/model-unavailable")
    assert "broken" in str(problem["detail"])
    assert int(failed.headers["retry-after"]) >= 1
    assert phase(several, "broken") == "failed"
    # Within the retry delay, the failure is answered at once (no second load).
    assert_problem(chat(several, "broken"), 503)
    # A model whose tokenizer cannot load is unavailable too, not a server error.
    hollow = assert_problem(chat(several, "hollow"), 503)
    assert str(hollow["type"]).endswith("/model-unavailable")
    answered = chat(several, "gamma")
    assert answered.status_code == 200, answered.text
    # The server stays ready: one bad model is not the server's failure.
    assert httpx.get(several.url + "/health/ready", timeout=10).status_code == 200


def test_an_unknown_model_is_404_naming_the_served_ones(several: Server) -> None:
    problem = assert_problem(chat(several, "delta"), 404)
    assert "'gamma'" in str(problem["detail"])
    document = httpx.get(several.url + "/openapi.json", timeout=10).text
    assert '["alpha","beta","gamma","broken","hollow"]' in document.replace(" ", "")


def test_metrics_and_the_audit_log_carry_the_model(several: Server) -> None:
    assert chat(several, "gamma").status_code == 200
    parsed = samples(metrics_text(several))
    assert value(parsed, "troupe_requests_total", model="gamma", status="200") >= 1
    # vLLM's names, one series per model, as dashboards filter them by model_name.
    assert value(parsed, "vllm:request_success_total", model_name="gamma") >= 1

    def running_gauge_models() -> set[str]:
        rows = samples(metrics_text(several))["vllm:num_requests_running"]
        return {labels["model_name"] for _, labels, _ in rows}

    eventually(lambda: "gamma" in running_gauge_models())  # its engine's first report

    def audited(model: str) -> list[dict[str, Any]]:
        rows = httpx.get(
            several.url + "/admin/audit-logs",
            params={"model": model},
            headers={"authorization": "Bearer k"},
            timeout=10,
        )
        assert rows.status_code == 200, rows.text
        data: list[dict[str, Any]] = rows.json()["data"]
        return data

    # The log is written in batches: wait for the rows rather than guess when.
    eventually(lambda: bool(audited("broken")) and bool(audited("gamma")))
    assert {row["status"] for row in audited("broken")} == {503}
    assert all(row["error_type"] == "model_unavailable" for row in audited("broken"))


def test_an_idle_model_is_unloaded_after_its_keep_alive_and_reloads(
    model_dir: Path, tmp_path: Path
) -> None:
    models = write_models(
        tmp_path / "models.toml",
        f"""
[[model]]
name = "brief"
path = "{model_dir}"
keep_alive = 2.0
""",
    )
    # Not shorter: a keep-alive that ends between a load and the admission of the
    # request that asked for it (a busy CI machine) unloads the model under it.
    with running_server(None, tmp_path, "--models", str(models)) as server:
        assert phase(server, "brief") == "unloaded"
        assert chat(server, "brief").status_code == 200
        eventually(lambda: phase(server, "brief") == "unloaded")
        assert chat(server, "brief").status_code == 200
        assert model_states(server)["brief"]["loads"] == 2


def test_troupe_status_shows_every_model(several: Server) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "status", "--url", several.url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines() if line}
    assert rows.get("MODEL") == "PHASE"
    assert rows["broken"] == "failed"
    assert rows["gamma"] == "loaded"
