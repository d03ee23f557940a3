"""End to end: a real ``troupe serve`` process, real hypercorn, real clients."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server import Server, running_server

pytestmark = pytest.mark.timeout(180)

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "request_id"}


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("api")) as running:
        yield running


def model_name(server: Server) -> str:
    models = httpx.get(server.url + "/v1/models", timeout=10).json()
    name: str = models["data"][0]["id"]
    return name


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "/work/", "/tmp/", 'File "'):
        assert leak not in response.text
    return body


def test_openai_client_non_streaming_chat_and_completion(server: Server) -> None:
    api = client(server)
    model = model_name(server)
    chat = api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 8
    text = api.completions.create(model=model, prompt="Once upon", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason == "length"
    assert text.usage is not None and text.usage.completion_tokens == 5


def test_openai_client_streaming_chat_with_usage(server: Server) -> None:
    api = client(server)
    stream = api.chat.completions.create(
        model=model_name(server),
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = api.chat.completions.create(
        model=model_name(server),
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        temperature=0,
    )
    assert text == whole.choices[0].message.content


def test_raw_sse_ends_with_done(server: Server) -> None:
    body = {"model": model_name(server), "prompt": "abc", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "POST",
            "/v1/chat/completions",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("GET", "/v1/nowhere", {}, 404),
        (
            "POST",
            "/v1/completions",
            {"content": b"x" * (2 * 1024 * 1024), "headers": {"content-type": "application/json"}},
            413,
        ),
        (
            "POST",
            "/v1/completions",
            {"content": b"{}", "headers": {"content-type": "text/plain"}},
            415,
        ),
    ],
    ids=["malformed-json", "unknown-path", "too-large", "wrong-content-type"],
)
def test_error_statuses_are_problems(
    server: Server, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    response = httpx.request(method, server.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]
    assert_problem(response, status)


def test_wrong_method_is_405_with_allow(server: Server) -> None:
    response = httpx.get(server.url + "/v1/chat/completions", timeout=10)
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


def test_unknown_model_is_404(server: Server) -> None:
    body = {"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}
    assert_problem(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10), 404)


def test_invalid_field_is_422_and_names_it(server: Server) -> None:
    body = {
        "model": model_name(server),
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": "hot",
    }
    problem = assert_problem(
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10), 422
    )
    assert "temperature" in str(problem["detail"])
    other = {"model": model_name(server), "prompt": "hi", "max_tokens": -3, "unknown_field": 1}
    problem = assert_problem(
        httpx.post(server.url + "/v1/completions", json=other, timeout=10), 422
    )
    assert "max_tokens" in str(problem["detail"])


def test_request_ids_are_echoed_when_well_formed_and_replaced_otherwise(server: Server) -> None:
    good = httpx.get(server.url + "/health/live", headers={"x-request-id": "abc-123"}, timeout=10)
    assert good.headers["x-request-id"] == "abc-123"
    bad = httpx.get(server.url + "/health/live", headers={"x-request-id": "x" * 300}, timeout=10)
    assert bad.headers["x-request-id"] != "x" * 300
    assert len(bad.headers["x-request-id"]) == 32


def test_health_endpoints(server: Server) -> None:
    assert httpx.get(server.url + "/health/live", timeout=10).status_code == 200
    assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "healthy"
    assert set(health["actors"]) >= {"generation", "kvcache", "intake"}
    tree = httpx.get(server.url + "/v1/supervisor", timeout=10).json()
    assert tree["root"]["name"] == "troupe"


def test_sixty_four_concurrent_streams_are_all_served(server: Server) -> None:
    model = model_name(server)
    results: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        body = {"model": model, "prompt": f"Client {n} says", "max_tokens": 16, "stream": True}
        try:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
                lines = [line for line in r.iter_lines() if line]
                outcome = (
                    "ok"
                    if r.status_code == 200 and lines[-1] == "data: [DONE]"
                    else f"status {r.status_code}"
                )
        except httpx.TransportError as exc:
            outcome = f"dropped: {type(exc).__name__}"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert results.count("ok") == 64, results


def test_sigterm_drains_in_flight_and_refuses_new_work(model_dir: Path, tmp_path: Path) -> None:
    with running_server(model_dir, tmp_path, "--drain-timeout", "60") as srv:
        model = model_name(srv)
        body = {
            "model": model,
            "prompt": "Long answer",
            "max_tokens": 400,
            "stream": True,
            "temperature": 0,
            "logit_bias": {str(token): -100 for token in range(7)},  # no EOS: runs to the end
        }
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            srv.process.send_signal(signal.SIGTERM)
            # The signal is handled asynchronously: wait until the server says it
            # is draining, then try to start new work.
            deadline = time.monotonic() + 30
            while httpx.get(srv.url + "/health/ready", timeout=10).status_code != 503:
                assert time.monotonic() < deadline, "the server never started draining"
                time.sleep(0.05)  # another process's state: no event to wait on
            refused = httpx.post(
                srv.url + "/v1/completions", json={**body, "stream": False}, timeout=30
            )
            assert_problem(refused, 503)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: ") :])["choices"][0]["finish_reason"] == "length"
        assert srv.process.wait(60) == 0


def test_serve_generates_and_serves_the_embedded_model(tmp_path: Path) -> None:
    env = {"TROUPE_CACHE_DIR": str(tmp_path / "cache")}
    args = ("--model", "embedded", "--max-body-bytes", "300")
    with running_server(None, tmp_path, *args, env=env) as srv:
        assert model_name(srv) == "mlx-troupe-embedded-tiny"
        assert "serving mlx-troupe-embedded-tiny on http://" in srv.log()
        body = {"model": "mlx-troupe-embedded-tiny", "prompt": "Hi", "max_tokens": 3}
        answer = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        too_large = {**body, "prompt": "x" * 400}  # over the configured 300 bytes
        assert_problem(httpx.post(srv.url + "/v1/completions", json=too_large, timeout=60), 413)
    assert any((tmp_path / "cache").rglob("model.safetensors"))
