"""What outside testing found (a peer fuzzer, real clients, a review), each pinned end to end.

Every test here failed on the server as it was before the fix:

- a deeply nested JSON body was a 500 (the decoder's ``RecursionError``);
- an integer-valued number (``5.0``), an integer in JSON Schema, was a 422;
- ``/admin`` answered an undeclared method 403 instead of 405;
- spelling variants of one API key, or made-up headers without keys, each got
  a fresh rate-limit bucket;
- fields that change the answer (tools, structured output, logprobs, ...)
  were accepted and ignored, and a history with tool calls was refused;
- a negative ``seed`` crashed the engine for every stream in the batch;
- a request's deadline started only after admission and tokenization.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from api.http.asgi import decode_json
from api.http.problems import HTTPProblem
from api.openai.request_types import NOT_HONOURED, CompletionRequest
from tests.server import Server, running_server
from tests.test_api import assert_problem, model_name
from tests.test_api_metrics import eventually

pytestmark = pytest.mark.timeout(180)

KEYS = ("outside-key-one", "outside-key-two")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("outside")) as running:
        yield running


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 3,
        **fields,
    }


def post(server: Server, path: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"model":' * 10_000, 400),
        (b"1" * 5000, 422),  # valid JSON, but no integer a field takes
        (b'{"max_tokens": 1e999999}', 422),
        (b'{"model": "m", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 422),
    ],
)
def test_no_body_escapes_the_decoder_as_anything_but_a_4xx(raw: bytes, status: int) -> None:
    with pytest.raises(HTTPProblem) as refused:
        decode_json(raw, CompletionRequest, NOT_HONOURED)
    assert refused.value.problem.status == status


def test_an_integer_valued_number_decodes_as_an_integer() -> None:
    body = decode_json(b'{"model": "m", "prompt": "x", "max_tokens": 4.0}', CompletionRequest)
    assert body.max_tokens == 4 and isinstance(body.max_tokens, int)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
@pytest.mark.parametrize("closed", [True, False])
def test_a_deeply_nested_body_is_a_400_problem(
    server: Server, opening: bytes, closed: bool
) -> None:
    depth = 50_000
    closing = (b"]" if opening == b"[" else b"}") * depth if closed else b""
    body = opening * depth + (b"1" if opening != b"[" else b"") + closing
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = httpx.post(
            server.url + path,
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        problem = assert_problem(response, 400)
        assert problem["type"] == "https://mlx-troupe.dev/problems/malformed-json"
    assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200


def test_an_integer_valued_number_counts_as_an_integer(server: Server) -> None:
    response = post(
        server, "/v1/chat/completions", chat(model_name(server), max_tokens=3.0, seed=7.0)
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 3
    assert_problem(
        post(server, "/v1/chat/completions", chat(model_name(server), max_tokens=3.5)), 422
    )


def test_undeclared_methods_are_405_before_any_key_check(server: Server) -> None:
    for path in ("/admin/audit-logs", "/admin/faults", "/v1/chat/completions", "/v1/models"):
        refused = assert_problem(httpx.request("TRACE", server.url + path, timeout=10), 405)
        assert refused["type"] == "https://mlx-troupe.dev/problems/method-not-allowed"
    # Without an admin key configured, a declared admin route is 403, as documented.
    assert_problem(httpx.get(server.url + "/admin/audit-logs", timeout=10), 403)


def test_the_document_describes_this_server(server: Server) -> None:
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    paths = document["paths"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "403" in paths["/admin/audit-logs"]["get"]["responses"]
    assert "404" in paths["/admin/faults"]["post"]["responses"]  # fault injection is off
    assert paths["/v1/models"]["get"]["security"] == []  # no API keys on this server
    chat_schema = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat_schema["model"]["enum"] == [model_name(server)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f"}]),
        ("modalities", ["text", "audio"]),
        ("web_search_options", {}),
        ("audio", {"voice": "alloy", "format": "wav"}),
    ],
)
def test_a_field_the_server_cannot_honour_is_refused_by_name(
    server: Server, field: str, value: object
) -> None:
    problem = assert_problem(
        post(server, "/v1/chat/completions", chat(model_name(server), **{field: value})), 422
    )
    assert str(problem["detail"]).startswith(f"`{field}`")


@pytest.mark.parametrize(("field", "value"), [("suffix", "end"), ("echo", True), ("best_of", 2)])
def test_text_completion_fields_the_server_cannot_honour_are_refused(
    server: Server, field: str, value: object
) -> None:
    body = {"model": model_name(server), "prompt": "Once", "max_tokens": 2, field: value}
    problem = assert_problem(post(server, "/v1/completions", body), 422)
    assert str(problem["detail"]).startswith(f"`{field}`")


def test_values_that_change_nothing_and_hints_are_accepted(server: Server) -> None:
    body = chat(
        model_name(server),
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        logprobs=False,
        parallel_tool_calls=True,
        user="someone",
        service_tier="auto",
        store=False,
        metadata={"team": "a"},
    )
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text


def test_a_history_with_tool_calls_and_tool_results_is_answered(server: Server) -> None:
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    answer = api.chat.completions.create(
        model=model_name(server),
        max_tokens=3,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ],
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.prompt_tokens > 20
    # A tool result must say which call it answers.
    orphan = chat(model_name(server), messages=[{"role": "tool", "content": "sunny"}])
    assert_problem(post(server, "/v1/chat/completions", orphan), 422)


def test_a_negative_seed_is_served_without_crashing_the_engine(server: Server) -> None:
    for seed in (-1, -(2**63)):
        body = chat(model_name(server), seed=seed, temperature=1.0, max_tokens=4)
        first = post(server, "/v1/chat/completions", body)
        assert first.status_code == 200, first.text
        again = post(server, "/v1/chat/completions", body)
        assert again.json()["choices"] == first.json()["choices"]  # the seed still seeds
    tree = httpx.get(server.url + "/v1/supervisor", timeout=10).json()
    generation = next(c for c in tree["root"]["children"] if c["name"] == "generation")
    assert generation["restarts_total"] == 0


def test_spellings_of_one_key_share_one_rate_limit_bucket(model_dir: Path, tmp_path: Path) -> None:
    flags = ("--api-keys", ",".join(KEYS), "--rate-limit-per-second", "0.01")
    with running_server(model_dir, tmp_path, *flags, "--rate-limit-burst", "2") as srv:
        body = chat(model_dir.name, max_tokens=1)  # the directory's name: /v1/models needs a key
        spellings = (f"Bearer {KEYS[0]}", f"bearer   {KEYS[0]}", f"BEARER \t {KEYS[0]}")
        statuses = [
            post(srv, "/v1/chat/completions", body, authorization=spelling).status_code
            for spelling in spellings
        ]
        assert statuses == [200, 200, 429]
        # The other key is another client, with a bucket of its own.
        other = post(srv, "/v1/chat/completions", body, authorization=f"Bearer {KEYS[1]}")
        assert other.status_code == 200


def test_without_keys_made_up_credentials_share_the_address_bucket(
    model_dir: Path, tmp_path: Path
) -> None:
    flags = ("--rate-limit-per-second", "0.01", "--rate-limit-burst", "2")
    with running_server(model_dir, tmp_path, *flags) as srv:
        body = chat(model_name(srv), max_tokens=1)
        statuses = [
            post(srv, "/v1/chat/completions", body, authorization=f"Bearer made-up-{n}").status_code
            for n in range(3)
        ]
        assert statuses == [200, 200, 429]


def test_the_deadline_set_at_arrival_covers_admission(model_dir: Path, tmp_path: Path) -> None:
    flags = ("--fault-injection", "--chat-timeout", "1.0", "--admin-key", "outside-admin")
    with running_server(model_dir, tmp_path, *flags) as srv:
        admin = {"authorization": "Bearer outside-admin"}
        slow = {"kind": "slow_actor", "actor": "intake", "seconds": 4.0, "messages": 1}
        assert post(srv, "/admin/faults", slow, **admin).status_code == 200
        started = time.monotonic()
        response = post(srv, "/v1/chat/completions", chat(model_name(srv), max_tokens=2))
        elapsed = time.monotonic() - started
        # Intake holds the admission for 4 s; the request's 1 s deadline ends it
        # there. Before, the deadline started after admission: 504 after 5 s.
        problem = assert_problem(response, 504)
        assert problem["type"] == "https://mlx-troupe.dev/problems/deadline-exceeded"
        assert elapsed < 3.0, elapsed
        # Intake books the Admit once it is free, after the asker gave up: the
        # Release sent behind it frees the booking, so nothing looks in flight
        # (before, it did until reclaimed a minute later, and a SIGTERM waited
        # out the whole drain timeout for it).
        eventually(lambda: in_flight(srv) == 0)
        stopping = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - stopping < 10.0


def in_flight(server: Server) -> int:
    status = httpx.get(server.url + "/v1/supervisor", timeout=10).json()
    count: int = status["intake"]["in_flight"] if status["intake"] else -1
    return count
