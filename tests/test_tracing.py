"""OpenTelemetry traces of real requests, received by a real OTLP endpoint.

A ``troupe serve`` process exports to a receiver started by the test, which
decodes the protobuf the SDK sends; the engine process exports on its own.
One trace per request, the span tree as documented, the caller's
``traceparent`` honoured, and no prompt or completion text anywhere.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from actors.telemetry import DEFAULT_ENDPOINTS, choose_tracing
from tests.otlp_receiver import ReceivedSpan, Spans, grpc_receiver, http_receiver
from tests.server import Server, running_server
from tests.test_api import model_name
from tests.test_api_metrics import eventually
from tests.test_config import check_config

pytestmark = pytest.mark.timeout(180)

SERVER_SIDE = {"admission", "tokenization", "stream_end"}
ENGINE_SIDE = {"queue", "prefill", "decode"}
SPAN_KIND_SERVER = 2
STATUS_ERROR = 2
SECRET_PROMPT = "zebra quartz violin"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "troupe-under-test"}


def traceparent() -> tuple[str, str, str]:
    """A caller's W3C trace context: the header, its trace id and its span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace_id]


def complete(trace_id: str, engine: bool = True) -> Callable[[list[ReceivedSpan]], bool]:
    """Whether a request's trace has every span it should (the engine's, if it generated)."""
    wanted = {"root"} | SERVER_SIDE | (ENGINE_SIDE if engine else set())

    def check(spans: list[ReceivedSpan]) -> bool:
        names = {
            "root" if span.kind == SPAN_KIND_SERVER else span.name
            for span in of_trace(spans, trace_id)
        }
        return wanted <= names

    return check


@pytest.fixture(scope="module")
def traced(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Spans]]:
    with http_receiver() as (url, spans):
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": url}
        with running_server(model_dir, tmp_path_factory.mktemp("traced"), env=env) as server:
            yield server, spans


def chat(server: Server, headers: dict[str, str], stream: bool = True) -> httpx.Response:
    body = {
        "model": model_name(server),
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "max_tokens": 6,
        "stream": stream,
    }
    response = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def test_a_request_is_one_trace_under_the_callers_span(traced: tuple[Server, Spans]) -> None:
    server, received = traced
    header, trace_id, caller_span = traceparent()
    answer = chat(server, {"traceparent": header, "x-request-id": "traced-1"})
    spans = of_trace(received.wait_for(complete(trace_id)), trace_id)

    (root,) = [span for span in spans if span.kind == SPAN_KIND_SERVER]
    assert root.parent_span_id == caller_span  # the caller's traceparent honoured
    model = model_name(server)
    assert root.name == f"chat {model}"
    attributes = root.attributes
    assert attributes["troupe.request_id"] == "traced-1"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] in (["length"], ["stop"])
    assert attributes["http.response.status_code"] == 200
    assert root.resource["service.name"] == "troupe-under-test"

    children = [span for span in spans if span is not root]
    assert {span.name for span in children} >= SERVER_SIDE | ENGINE_SIDE
    assert all(span.parent_span_id == root.span_id for span in children)
    by_name = {span.name: span for span in children}
    # The engine's spans come from the engine process, on the same trace.
    server_pid = root.resource["process.pid"]
    for name in ENGINE_SIDE:
        assert by_name[name].resource["troupe.role"] == "engine"
        assert by_name[name].resource["process.pid"] != server_pid
    for name in SERVER_SIDE:
        assert by_name[name].resource["troupe.role"] == "server"
    # In order: admitted, tokenized, queued, prefilled, decoded, answered.
    order = ["admission", "tokenization", "queue", "prefill", "decode", "stream_end"]
    starts = [by_name[name].start_ns for name in order]
    assert starts == sorted(starts)
    assert all(root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns for span in children)
    # Counts and ids only: neither the prompt nor the answer is in any attribute.
    text = "".join(
        line.removeprefix("data: ") for line in answer.text.splitlines() if '"content"' in line
    )
    assert text
    for span in spans:
        for value in (*span.attributes.values(), *span.resource.values()):
            assert "zebra" not in str(value) and "quartz" not in str(value)


def test_a_request_without_a_traceparent_starts_its_own_trace(
    traced: tuple[Server, Spans],
) -> None:
    server, received = traced
    chat(server, {"x-request-id": "untraced-caller"}, stream=False)

    def arrived(spans: list[ReceivedSpan]) -> bool:
        return any(s.attributes.get("troupe.request_id") == "untraced-caller" for s in spans)

    spans = received.wait_for(arrived)
    (root,) = [s for s in spans if s.attributes.get("troupe.request_id") == "untraced-caller"]
    assert root.parent_span_id == ""  # a root: nobody sent a context
    trace = of_trace(received.wait_for(complete(root.trace_id)), root.trace_id)
    assert len([span for span in trace if span.kind == SPAN_KIND_SERVER]) == 1


def test_a_refused_request_has_its_span_and_its_error_type(traced: tuple[Server, Spans]) -> None:
    server, received = traced
    header, trace_id, _ = traceparent()
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": SECRET_PROMPT}]},
        headers={"traceparent": header},
        timeout=30,
    )
    assert response.status_code == 404

    def arrived(spans: list[ReceivedSpan]) -> bool:
        return bool(of_trace(spans, trace_id))

    (root,) = of_trace(received.wait_for(arrived), trace_id)
    assert root.attributes["http.response.status_code"] == 404
    assert root.attributes["error.type"] == "model_not_found"
    assert root.status_code != STATUS_ERROR  # the client's mistake, not the server's
    # A refusal's message and traceback stay out of every span: no exception events.
    assert not root.events


def test_the_request_log_line_names_its_trace(traced: tuple[Server, Spans]) -> None:
    server, received = traced
    header, trace_id, _ = traceparent()
    chat(server, {"traceparent": header, "x-request-id": "logged-trace"}, stream=False)
    received.wait_for(complete(trace_id))

    def logged() -> bool:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return any(
            line.get("request_id") == "logged-trace" and line.get("trace_id") == trace_id
            for line in lines
        )

    eventually(logged)


def test_traces_also_go_over_grpc(model_dir: Path, tmp_path: Path) -> None:
    with grpc_receiver() as (endpoint, received):
        env = {
            **FAST_EXPORT,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        }
        with running_server(model_dir, tmp_path, env=env) as server:
            header, trace_id, caller_span = traceparent()
            chat(server, {"traceparent": header})
            spans = of_trace(received.wait_for(complete(trace_id)), trace_id)
    (root,) = [span for span in spans if span.kind == SPAN_KIND_SERVER]
    assert root.parent_span_id == caller_span


def test_the_endpoint_and_protocol_are_chosen_as_the_specification_says() -> None:
    assert choose_tracing(False, None, {}).config is None  # off by default
    on = choose_tracing(True, None, {}).config
    assert on is not None and on.endpoint == DEFAULT_ENDPOINTS["http/protobuf"]
    generic = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    chosen = choose_tracing(False, None, generic).config
    assert chosen is not None and chosen.endpoint == "http://collector:4318/v1/traces"
    specific = {**generic, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/x"}
    chosen = choose_tracing(False, None, specific).config
    assert chosen is not None and chosen.endpoint == "http://traces:9999/x"
    ours = choose_tracing(False, "http://ours:4318/v1/traces", specific).config
    assert ours is not None and ours.endpoint == "http://ours:4318/v1/traces"
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    chosen = choose_tracing(False, None, grpc).config
    assert chosen is not None and (chosen.protocol, chosen.endpoint) == ("grpc", "http://c:4317")
    assert choose_tracing(False, None, {"OTEL_SERVICE_NAME": "x"}).config is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "http:// or https://"),
    ],
)
def test_check_config_refuses_what_cannot_be_exported(env: dict[str, str], words: str) -> None:
    result = check_config("--tracing", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
