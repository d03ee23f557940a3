"""Anthropic's Messages API end to end, with Anthropic's own client.

The generated model writes gibberish: greedy decoding (``temperature`` 0,
which Anthropic's newest client no longer sends itself, so it goes in
``extra_body``) makes its answers repeatable, and tool calls that validate are
the constrained decoding's doing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.server import Server, running_server
from tests.test_api_metrics import eventually, samples, value

pytestmark = pytest.mark.timeout(240)

KEY = "anthropic-test-key"
GREEDY = {"temperature": 0}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: Any = [{"name": "get_weather", "description": "The forecast", "input_schema": WEATHER}]
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
}


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        model_dir, tmp_path_factory.mktemp("anthropic"), "--api-keys", KEY
    ) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model(server: Server) -> str:
    models = httpx.get(server.url + "/v1/models", headers={"x-api-key": KEY}, timeout=10)
    name: str = models.json()["data"][0]["id"]
    return name


def assert_anthropic_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == ERROR_TYPES[status]
    assert body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "/work/", "/tmp/", 'File "', KEY):
        assert leak not in response.text
    return body


def test_a_plain_message_has_text_usage_and_a_stop_reason(
    api: anthropic.Anthropic, model: str
) -> None:
    message = api.messages.create(
        model=model,
        max_tokens=12,
        system=[
            {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}
        ],
        messages=[{"role": "user", "content": "Hello"}],
        metadata={"user_id": "someone"},
        extra_body=GREEDY,
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == model
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 12
    counted = api.messages.count_tokens(
        model=model,
        system=[{"type": "text", "text": "Answer briefly."}],
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert counted.input_tokens > 0
    # Prompt tokens are either computed or read from the prefix cache.
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == counted.input_tokens


def test_a_streamed_message_sends_anthropics_events_in_order(
    api: anthropic.Anthropic, model: str
) -> None:
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "extra_body": GREEDY,
    }
    whole = api.messages.create(**request)
    with api.messages.stream(**request) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_message()
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks = names[1:-2]
    assert blocks[0] == "content_block_start" and blocks[-1] == "content_block_stop"
    assert set(blocks[1:-1]) <= {"content_block_delta", "text"}
    assert final.content[0].type == "text" and whole.content[0].type == "text"
    assert final.content[0].text == whole.content[0].text  # greedy: the same answer either way
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10


def test_raw_stream_has_ping_and_named_events(server: Server, model: str) -> None:
    body = {
        "model": model,
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    response = httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60
    )
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    events = [block for block in response.text.split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[:2] == ["message_start", "ping"]
    for block in events:
        name, data = block.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")


def test_a_stop_sequence_is_named_as_the_reason(api: anthropic.Anthropic, model: str) -> None:
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 24,
        "messages": [{"role": "user", "content": "Count for me"}],
        "extra_body": GREEDY,
    }
    text = api.messages.create(**request).content[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = api.messages.create(**request, stop_sequences=["never appears", stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == text[: text.index(stop)]


def test_a_tool_use_round_trip(api: anthropic.Anthropic, model: str) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    first = api.messages.create(
        model=model,
        max_tokens=200,
        messages=[question],
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER)
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 24 C"}],
    }
    turns: Any = [question, {"role": "assistant", "content": first.content}, result]
    second = api.messages.create(
        model=model, max_tokens=6, messages=turns, tools=TOOLS, extra_body=GREEDY
    )
    assert second.stop_reason == "max_tokens"
    # The tool turn reached the template: the prompt grew by the call and its result.
    asked = api.messages.count_tokens(model=model, messages=[question], tools=TOOLS).input_tokens
    answered = api.messages.count_tokens(model=model, messages=turns, tools=TOOLS).input_tokens
    assert answered > asked + 10


def test_a_forced_tool_call_streams_as_a_tool_use_block(
    api: anthropic.Anthropic, model: str
) -> None:
    with api.messages.stream(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [event.delta for event in events if event.type == "content_block_delta"]
    assert any(delta.type == "input_json_delta" for delta in deltas)
    (use,) = [block for block in final.content if block.type == "tool_use"]
    jsonschema.validate(use.input, WEATHER)
    assert final.stop_reason == "tool_use"


def test_output_config_format_is_enforced(api: anthropic.Anthropic, model: str) -> None:
    message = api.messages.create(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": "The forecast as JSON"}],
        output_config={"format": {"type": "json_schema", "schema": WEATHER}},
    )
    jsonschema.validate(json.loads(message.content[0].text), WEATHER)  # type: ignore[union-attr]


def test_a_final_assistant_turn_is_continued_not_answered(
    api: anthropic.Anthropic, model: str, loaded_model: Any
) -> None:
    prefill: Any = [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "My favourite colour is"},
    ]
    expected = loaded_model.tokenizer.apply_chat_template(
        prefill, continue_final_message=True, add_generation_prompt=False
    )
    counted = api.messages.count_tokens(model=model, messages=prefill).input_tokens
    assert counted == len(expected)  # the prompt ends inside the assistant's turn
    message = api.messages.create(model=model, max_tokens=5, messages=prefill, extra_body=GREEDY)
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == counted
    calling: Any = [
        prefill[0],
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        },
    ]
    with pytest.raises(anthropic.BadRequestError):
        api.messages.create(model=model, max_tokens=5, messages=calling, tools=TOOLS)


def test_count_tokens_is_counted_as_answered(
    server: Server, api: anthropic.Anthropic, model: str
) -> None:
    def counted() -> float:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        return value(samples(text), "troupe_requests_total", endpoint="count_tokens", status="200")

    before = counted()
    api.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}])
    eventually(lambda: counted() == before + 1)


def test_errors_come_in_anthropics_shape_with_the_request_id(
    api: anthropic.Anthropic, server: Server, model: str
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        api.messages.create(
            model="claude-unknown", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    url = server.url + "/v1/messages"
    ok = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert_anthropic_error(
        httpx.post(url, json=ok, headers={"x-api-key": "wrong"}, timeout=10), 401
    )
    assert_anthropic_error(httpx.post(url, json=ok, timeout=10), 401)
    missing_max = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    body = assert_anthropic_error(
        httpx.post(url, json=missing_max, headers={"x-api-key": KEY}, timeout=10), 400
    )
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as invalid:  # as Anthropic's API answers
        api.messages.create(model=model, max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert invalid.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    not_json = httpx.post(
        url, content=b"max_tokens=5", headers={"x-api-key": KEY, "content-type": "text/plain"}
    )
    assert_anthropic_error(not_json, 400)
    misplaced = {
        **ok,
        "messages": [
            {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
        ],
    }
    assert_anthropic_error(
        httpx.post(url, json=misplaced, headers={"x-api-key": KEY}, timeout=10), 400
    )
    thinking = {**ok, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    refused = assert_anthropic_error(
        httpx.post(url, json=thinking, headers={"x-api-key": KEY}, timeout=10), 400
    )
    assert "think" in refused["error"]["message"]
    # The same key as a bearer token works too.
    bearer = httpx.post(url, json=ok, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert bearer.status_code == 200, bearer.text
