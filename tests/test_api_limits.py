"""End to end: overload, deadlines, disconnects, API keys and `troupe status`."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.drills import troupe_status
from tests.server import Server, running_server
from tests.test_api import assert_problem, model_name

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tight(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One sequence at a time, two requests in flight at most, short completion deadline."""
    args = ["--max-running", "1", "--queue-max-requests", "2", "--completion-timeout", "1.5"]
    with running_server(model_dir, tmp_path_factory.mktemp("tight"), *args) as running:
        yield running


def long_chat(server: Server, tokens: int = 1500) -> dict[str, object]:
    return {
        "model": model_name(server),
        "messages": [{"role": "user", "content": "Go on for a long time"}],
        "max_tokens": tokens,
        "temperature": 0,
        # No special tokens (ids 0-6): never EOS, and every token is visible text,
        # so the request streams and really runs to max_tokens.
        "logit_bias": {str(token): -100 for token in range(7)},
    }


def engine_running(server: Server) -> int:
    engine = httpx.get(server.url + "/v1/supervisor", timeout=10).json()["engine"]
    running: int = engine["running"] + engine["waiting"]
    return running


def wait_until_engine_holds(server: Server, count: int) -> None:
    """Poll the server (another process: no event to wait on) until it holds ``count``."""
    deadline = time.monotonic() + 30
    while engine_running(server) != count:
        assert time.monotonic() < deadline, "the engine never reached the expected load"
        time.sleep(0.05)


def test_queue_full_burst_gets_429_with_retry_after(tight: Server) -> None:
    statuses: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        response = httpx.post(
            tight.url + "/v1/chat/completions", json=long_chat(tight, 200), timeout=120
        )
        with lock:
            statuses.append(response)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    refused = [r for r in statuses if r.status_code == 429]
    assert len(statuses) == 8
    assert refused, [r.status_code for r in statuses]
    assert {r.status_code for r in statuses} <= {200, 429}
    for response in refused:
        assert_problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1


def test_deadline_expiring_while_queued_is_504(tight: Server) -> None:
    outcome: dict[str, int] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            long=httpx.post(
                tight.url + "/v1/chat/completions", json=long_chat(tight), timeout=120
            ).status_code
        )
    )
    runner.start()
    wait_until_engine_holds(tight, 1)
    queued = httpx.post(
        tight.url + "/v1/completions",
        json={"model": model_name(tight), "prompt": "behind the long one", "max_tokens": 5},
        timeout=60,
    )
    assert_problem(queued, 504)
    runner.join(120)
    assert outcome["long"] == 200


def test_client_disconnect_frees_its_batch_slot(tight: Server) -> None:
    body = {**long_chat(tight), "stream": True}
    with httpx.stream("POST", tight.url + "/v1/chat/completions", json=body, timeout=60) as stream:
        # Keep the line iterator alive: leaving it early would close the connection.
        lines = stream.iter_lines()
        line = ""
        while not line.startswith("data: "):
            line = next(lines)
        assert engine_running(tight) == 1
    wait_until_engine_holds(tight, 0)  # the slot is freed well before 1500 tokens


def test_troupe_status_against_a_live_server(tight: Server) -> None:
    printed = troupe_status(tight)
    for actor in ("intake", "kvcache", "generation", "running"):
        assert actor in printed
    assert "closed" in printed  # the cache breaker


def test_api_keys_guard_v1_and_admin_while_health_stays_open(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ["--api-keys", "key-one,key-two", "--admin-key", "admin-secret"]
    with running_server(model_dir, tmp_path, *args) as srv:
        models = srv.url + "/v1/models"
        assert_problem(httpx.get(models, timeout=10), 401)
        assert_problem(httpx.get(models, headers={"authorization": "Bearer nope"}, timeout=10), 401)
        ok = httpx.get(models, headers={"authorization": "Bearer key-two"}, timeout=10)
        assert ok.status_code == 200
        admin = srv.url + "/admin/audit-logs"
        assert_problem(
            httpx.get(admin, headers={"authorization": "Bearer key-one"}, timeout=10), 401
        )
        behind = httpx.get(admin, headers={"authorization": "Bearer admin-secret"}, timeout=10)
        assert_problem(behind, 404)  # past the key check: this server keeps no audit log
        # A route or method that does not exist is the same answer with or without a key.
        assert_problem(httpx.get(srv.url + "/admin/anything", timeout=10), 404)
        assert_problem(httpx.request("TRACE", admin, timeout=10), 405)
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
        assert "key-one" not in srv.log() and "admin-secret" not in srv.log()


def test_a_non_streaming_client_that_gives_up_frees_its_slot(tight: Server) -> None:
    gave_up = threading.Event()

    def impatient() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(tight.url + "/v1/chat/completions", json=long_chat(tight, 1900), timeout=2.0)
        gave_up.set()

    caller = threading.Thread(target=impatient)
    caller.start()
    wait_until_engine_holds(tight, 1)
    assert gave_up.wait(30)
    started = time.monotonic()
    wait_until_engine_holds(tight, 0)
    # 1,900 tokens take several seconds here; the slot is free long before that.
    assert time.monotonic() - started < 3.0
    caller.join(10)


def test_a_deadline_passing_mid_stream_ends_it_with_an_error_event_naming_the_request(
    tight: Server,
) -> None:
    # The completion deadline is 1.5 s; 1,500 tokens take far longer, so the
    # stream has started when the deadline cuts it.
    body = {**long_chat(tight), "prompt": "Go on", "stream": True}
    del body["messages"]
    headers = {"x-request-id": "deadline-mid-stream"}
    with httpx.stream(
        "POST", tight.url + "/v1/completions", json=body, headers=headers, timeout=60
    ) as stream:
        assert stream.status_code == 200
        events = [line[len("data: ") :] for line in stream.iter_lines() if line]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == (504, "deadline-exceeded")
    assert error["request_id"] == "deadline-mid-stream"
    assert len(events) > 3  # tokens were streamed before the deadline passed


def test_unknown_fields_are_ignored_on_a_request_that_succeeds(tight: Server) -> None:
    body = {
        "model": model_name(tight),
        "prompt": "hi",
        "max_tokens": 2,
        "temperature": 0,  # greedy: a sampled end-of-text token would stop it after one
        "logprobs_v9": {"nested": [1, 2]},
        "service_tier": "auto",
    }
    response = httpx.post(tight.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_health_answers_while_the_engine_is_busy(tight: Server) -> None:
    gave_up = threading.Event()

    def busy() -> None:
        with contextlib.suppress(httpx.ReadTimeout):  # leaving cancels the generation
            httpx.post(tight.url + "/v1/chat/completions", json=long_chat(tight, 1900), timeout=8)
        gave_up.set()

    caller = threading.Thread(target=busy)
    caller.start()
    wait_until_engine_holds(tight, 1)
    for path in ("/health", "/health/live", "/health/ready", "/v1/supervisor", "/v1/metrics"):
        assert httpx.get(tight.url + path, timeout=10).status_code == 200, path
    # Every answer came while the 1,900-token request was still generating: none
    # of them waited behind it.
    assert not gave_up.is_set() and engine_running(tight) == 1
    caller.join(30)
    wait_until_engine_holds(tight, 0)
