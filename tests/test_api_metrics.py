"""End to end: ``/metrics`` and ``/v1/metrics`` of a real ``troupe serve`` under real traffic."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.drills import supervisor
from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name
from tests.test_metrics import FAMILIES

pytestmark = pytest.mark.timeout(180)

ADMIN = {"authorization": "Bearer admin-secret"}
SERVER_ARGS = ("--fault-injection", "--admin-key", "admin-secret")

WINDOWS = ("end_to_end", "time_to_first_token", "inter_token_latency", "queue_time")
SCHEMA: dict[str, set[str]] = {
    "latency": {*WINDOWS, "window_size", "window_seconds"},
    "throughput": {
        "window_seconds",
        "requests_per_second",
        "tokens_per_second",
        "prompt_tokens_per_second",
        "total_requests",
        "total_tokens",
    },
    "cache": {
        "queries",
        "hits",
        "misses",
        "hit_rate",
        "hit_tokens",
        "evictions",
        "bytes",
        "logical_bytes",
        "entries",
        "state",
    },
    "memory": {
        "current_mb",
        "peak_mb",
        "initial_mb",
        "growth_mb",
        "mlx_active_mb",
        "mlx_peak_mb",
        "mlx_cache_mb",
        "engine_current_mb",
        "engine_peak_mb",
    },
    "requests": {
        "completed",
        "errors",
        "prompt_tokens",
        "generated_tokens",
        "running",
        "waiting",
        "shed",
        "cancelled",
        "dropped_events",
    },
    "actors": {"states", "restarts"},
}
PERCENTILES = {"count", "p50_ms", "p95_ms", "p99_ms"}

Samples = dict[str, list[tuple[str, dict[str, str], float]]]
"""Family name -> (sample name, labels, value) of each sample."""


@dataclass
class Observed:
    """A server, and what its metrics said before any request."""

    server: Server
    zero_json: dict[str, Any]
    zero_text: str


def metrics_json(server: Server, query: str = "") -> dict[str, Any]:
    response = httpx.get(server.url + "/v1/metrics" + query, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def metrics_text(server: Server) -> str:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def samples(text: str) -> Samples:
    """Every family's samples, parsed by prometheus_client's own parser."""
    return {
        family.name: [(sample.name, sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(parsed: Samples, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` that carry ``labels`` (0 when none do)."""
    return sum(
        v
        for rows in parsed.values()
        for name, row_labels, v in rows
        if name == sample and all(row_labels.get(k) == want for k, want in labels.items())
    )


def assert_schema(body: dict[str, Any], categories: set[str]) -> None:
    assert set(body) == {"timestamp", "uptime_seconds", *categories}
    assert abs(body["timestamp"] - time.time()) < 60
    assert body["uptime_seconds"] >= 0
    for name in categories:
        assert set(body[name]) == SCHEMA[name], name
    if "latency" in categories:
        for window in WINDOWS:
            assert set(body["latency"][window]) == PERCENTILES


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition in another process (no event to wait on across it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def observed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    with running_server(model_dir, tmp_path_factory.mktemp("metrics"), *SERVER_ARGS) as srv:
        # Read before any test sends a request: the zero-traffic figures.
        yield Observed(srv, metrics_json(srv), metrics_text(srv))


def test_zero_traffic_figures(observed: Observed) -> None:
    body = observed.zero_json
    assert_schema(body, set(SCHEMA))
    assert body["cache"] == {
        "queries": 0,
        "hits": 0,
        "misses": 0,
        "hit_rate": 0.0,
        "hit_tokens": 0,
        "evictions": 0,
        "bytes": 0,
        "logical_bytes": 0,
        "entries": 0,
        "state": "closed",
    }
    for window in WINDOWS:
        assert body["latency"][window] == {
            "count": 0,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
        }
    throughput = body["throughput"]
    assert (throughput["requests_per_second"], throughput["tokens_per_second"]) == (0.0, 0.0)
    assert (throughput["total_requests"], throughput["window_seconds"]) == (0, 300.0)
    memory = body["memory"]
    assert memory["current_mb"] > 0 and memory["initial_mb"] > 0
    assert memory["peak_mb"] >= memory["current_mb"]
    assert memory["growth_mb"] == pytest.approx(memory["current_mb"] - memory["initial_mb"])
    assert memory["mlx_active_mb"] is not None and memory["mlx_peak_mb"] is not None
    assert (body["requests"]["running"], body["requests"]["waiting"]) == (0, 0)
    assert body["actors"]["states"]["troupe/generation"] == "running"
    zero = samples(observed.zero_text)
    assert not FAMILIES - zero.keys()
    assert value(zero, "troupe_requests_total") == 0.0


def test_the_engine_process_memory_is_reported(observed: Observed) -> None:
    """The weights live in the engine process: its memory is shown, and MLX's figures are its."""
    srv = observed.server

    def reported() -> bool:
        return metrics_json(srv, "?category=memory")["memory"]["engine_current_mb"] is not None

    eventually(reported)  # the first heartbeat after the engine came up
    memory = metrics_json(srv, "?category=memory")["memory"]
    assert memory["engine_current_mb"] > 0
    assert memory["engine_peak_mb"] >= memory["engine_current_mb"]
    assert memory["mlx_active_mb"] > 0  # the weights, in the engine; the server holds none
    pid = supervisor(srv)["engine"]["process"]["pid"]
    rss_mb = psutil.Process(pid).memory_info().rss / 2**20
    assert memory["engine_current_mb"] == pytest.approx(rss_mb, rel=0.5)
    parsed = samples(metrics_text(srv))
    assert value(parsed, "troupe_engine_resident_memory_bytes") > 0
    assert value(parsed, "troupe_engine_resident_memory_peak_bytes") > 0


def test_category_filters_and_refusals(observed: Observed) -> None:
    srv = observed.server
    assert_schema(metrics_json(srv, "?category=cache,latency"), {"cache", "latency"})
    assert_schema(metrics_json(srv, "?format=json&category=memory&category=throughput"),
                  {"memory", "throughput"})  # fmt: skip
    prometheus = httpx.get(srv.url + "/v1/metrics?format=prometheus", timeout=10)
    assert prometheus.headers["content-type"].startswith("text/plain")
    assert not FAMILIES - samples(prometheus.text).keys()
    for query in ("?format=xml", "?category=nope", "?category=cache,nope", "?format="):
        body = assert_problem(httpx.get(srv.url + "/v1/metrics" + query, timeout=10), 400)
        assert body["type"] == "https://mlx-troupe.dev/problems/invalid-query"
    for method, path in (("POST", "/v1/metrics"), ("DELETE", "/v1/metrics"), ("PUT", "/metrics")):
        refused = httpx.request(method, srv.url + path, timeout=10)
        assert_problem(refused, 405)
        assert refused.headers["allow"] == "GET"


def test_figures_follow_five_requests(observed: Observed) -> None:
    srv = observed.server
    api = client(srv)
    model = model_name(srv)
    before, before_text = metrics_json(srv), samples(metrics_text(srv))
    tokens = 0
    for n in range(3):
        reply = api.completions.create(model=model, prompt=f"five {n}", max_tokens=4)
        assert reply.usage is not None
        tokens += reply.usage.completion_tokens
    for n in range(2):
        stream = api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"stream {n}"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage is not None]
        tokens += usage[-1].completion_tokens
    after, after_text = metrics_json(srv), samples(metrics_text(srv))
    grew = after["throughput"]["total_requests"] - before["throughput"]["total_requests"]
    assert grew == 5
    assert after["throughput"]["total_tokens"] - before["throughput"]["total_tokens"] == tokens
    assert after["throughput"]["requests_per_second"] > 0.0
    for window in ("end_to_end", "time_to_first_token", "queue_time"):
        assert after["latency"][window]["count"] - before["latency"][window]["count"] == 5
        assert after["latency"][window]["p50_ms"] >= 0.0
    assert (
        after["latency"]["inter_token_latency"]["count"]
        > before["latency"]["inter_token_latency"]["count"]
    )
    assert after["requests"]["completed"] - before["requests"]["completed"] == 5
    for endpoint, count in (("completions", 3), ("chat", 2)):
        labels = {"endpoint": endpoint, "status": "200"}
        counted = value(after_text, "troupe_requests_total", **labels)
        assert counted - value(before_text, "troupe_requests_total", **labels) == count
    generated = value(after_text, "troupe_generation_tokens_total")
    assert generated - value(before_text, "troupe_generation_tokens_total") == tokens
    ended = value(after_text, "troupe_request_duration_seconds_count")
    assert ended - value(before_text, "troupe_request_duration_seconds_count") == 5


def test_every_family_has_figures_after_real_traffic(observed: Observed) -> None:
    srv = observed.server
    api = client(srv)
    model = model_name(srv)
    api.completions.create(model=model, prompt="families", max_tokens=3)
    assert_problem(
        httpx.post(srv.url + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=10),
        404,
    )
    # A crash of the engine: the request is retried transparently, the actor restarted.
    crash = {"kind": "engine_crash", "after_tokens": 1}
    assert httpx.post(srv.url + "/admin/faults", json=crash, headers=ADMIN, timeout=10).is_success
    api.completions.create(model=model, prompt="crash me", max_tokens=3)
    # Memory pressure sheds a request and evicts the cache; then it is over.
    pressure = {"kind": "memory_pressure", "active": True}
    assert httpx.post(
        srv.url + "/admin/faults", json=pressure, headers=ADMIN, timeout=10
    ).is_success
    shed = httpx.post(srv.url + "/v1/completions", json={"model": model, "prompt": "x"}, timeout=10)
    assert_problem(shed, 429)
    # The gauge the memory alert reads follows the engine's next report.
    eventually(lambda: value(samples(metrics_text(srv)), "troupe_memory_pressure") == 1.0)
    assert httpx.delete(srv.url + "/admin/faults", headers=ADMIN, timeout=30).is_success
    eventually(lambda: value(samples(metrics_text(srv)), "troupe_memory_pressure") == 0.0)
    # A client that goes away mid-stream.
    body = {"model": model, "prompt": "go", "max_tokens": 500, "stream": True,
            "logit_bias": {str(token): -100 for token in range(7)}}  # fmt: skip
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as stream:
        next(line for line in stream.iter_lines() if line)

    def cancelled() -> bool:
        counts: dict[str, int] = metrics_json(srv, "?category=requests")["requests"]["cancelled"]
        return counts.get("disconnect", 0) > 0

    eventually(cancelled)
    parsed = samples(metrics_text(srv))
    missing = FAMILIES - parsed.keys()
    assert not missing, missing
    assert value(parsed, "troupe_requests_total", status="404") > 0
    assert value(parsed, "troupe_requests_total", status="429") > 0
    assert value(parsed, "troupe_requests_shed_total", reason="pressure") > 0
    assert value(parsed, "troupe_requests_cancelled_total", reason="disconnect") > 0
    # The engine process crashed and was restarted (the generation actor, which keeps
    # the requests, did not).
    assert value(parsed, "troupe_actor_restarts_total", actor="troupe/engine") >= 1
    assert value(parsed, "troupe_actor_state", actor="troupe/generation", state="running") == 1
    for family in ("troupe_request_duration_seconds", "troupe_time_to_first_token_seconds",
                   "troupe_inter_token_latency_seconds", "troupe_queue_time_seconds"):  # fmt: skip
        assert value(parsed, family + "_count") > 0, family
    for sample in ("troupe_prompt_tokens_total", "troupe_generation_tokens_total",
                   "troupe_cache_queries_total", "troupe_cache_evictions_total",
                   "troupe_process_resident_memory_bytes",
                   "troupe_process_resident_memory_peak_bytes",
                   "troupe_mlx_peak_memory_bytes"):  # fmt: skip
        assert value(parsed, sample) > 0, sample
    assert [labels for _, labels, _ in parsed["troupe_requests_running"]] == [{}]
    assert value(parsed, "troupe_cache_breaker_state") == 0.0  # closed
    (info,) = [labels for _, labels, _ in parsed["troupe_config_info"]]
    assert info["model"] == "tiny" and info["fault_injection"] == "true"
    assert "admin_key" not in info and "api_keys" not in info
    assert "admin-secret" not in metrics_text(srv)


def test_a_client_gone_mid_upload_is_counted_as_a_disconnect(observed: Observed) -> None:
    srv = observed.server

    def disconnects() -> int:
        counts: dict[str, int] = metrics_json(srv, "?category=requests")["requests"]["cancelled"]
        return counts.get("disconnect", 0)

    before = disconnects()
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f'{head}Content-Length: 1000\r\n\r\n{{"model":'.encode())
    eventually(lambda: disconnects() == before + 1)
    parsed = samples(metrics_text(srv))
    assert value(parsed, "troupe_requests_total", status="499") >= 1
    assert value(parsed, "troupe_requests_total", status="500") == 0  # not a server error


def test_cache_hit_rate_after_a_known_mix(model_dir: Path, tmp_path: Path) -> None:
    with running_server(model_dir, tmp_path) as srv:
        model = model_name(srv)
        # Token-id prompts with distinct first tokens share no prefix with each other.
        fresh = [[300 + n, 400, 401, 402, 403, 404] for n in range(4)]
        repeated = [fresh[0], fresh[2], fresh[0]]
        for prompt in [*fresh, *repeated]:
            body = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0}
            assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).is_success
        cache = metrics_json(srv, "?category=cache")["cache"]
        assert (cache["queries"], cache["hits"], cache["misses"]) == (7, 3, 4)
        assert cache["hit_rate"] == pytest.approx(3 / 7)
        assert cache["hit_tokens"] == 3 * 5  # all but the last prompt token came from the cache
        parsed = samples(metrics_text(srv))
        assert value(parsed, "troupe_cache_hits_total") == 3
        assert value(parsed, "troupe_cache_queries_total") == 7


def test_metrics_answer_while_the_generation_actor_is_stuck(observed: Observed) -> None:
    srv = observed.server
    model = model_name(srv)
    slow = {"kind": "slow_actor", "actor": "generation", "seconds": 8.0, "messages": 1}
    assert httpx.post(srv.url + "/admin/faults", json=slow, headers=ADMIN, timeout=10).is_success
    results: list[int] = []

    def complete() -> None:
        body = {"model": model, "prompt": "stuck", "max_tokens": 2}
        results.append(httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code)

    senders = [threading.Thread(target=complete) for _ in range(2)]
    for sender in senders:
        sender.start()

    def generation_backed_up() -> bool:
        status = httpx.get(srv.url + "/v1/supervisor", timeout=10).json()
        generation = next(c for c in status["root"]["children"] if c["name"] == "generation")
        return bool(generation["mailbox_depth"] >= 1)  # one held, one waiting behind it

    eventually(generation_backed_up)
    for query in ("", "?category=latency,throughput,cache,memory"):
        body = metrics_json(srv, query)
        assert "timestamp" in body
    full = metrics_json(srv)
    assert full["requests"]["running"] is not None
    assert not FAMILIES - samples(metrics_text(srv)).keys()
    assert httpx.get(srv.url + "/health/live", timeout=10).status_code == 200
    assert all(sender.is_alive() for sender in senders)  # still held: all of it ran while stuck
    for sender in senders:
        sender.join(60)
    assert results == [200, 200]
