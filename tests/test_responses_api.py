"""OpenAI's Responses API end to end, with the ``openai`` client.

Stateless: every turn carries the whole conversation in ``input``. The
generated model writes gibberish, so calls and JSON that validate are the
constrained decoding's doing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name

pytestmark = pytest.mark.timeout(240)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The forecast",
        "parameters": WEATHER,
    }
]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("responses")) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> openai.OpenAI:
    return client(server)


def test_a_plain_response_has_output_text_and_usage(api: openai.OpenAI, server: Server) -> None:
    response = api.responses.create(
        model=model_name(server),
        instructions="Answer briefly.",
        input="Hello",
        max_output_tokens=9,
        temperature=0,
        metadata={"ticket": "42"},
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and response.output[0].type == "message"
    assert response.output[0].status == "incomplete"  # cut short, as the response is
    assert response.usage is not None and response.usage.output_tokens == 9
    assert response.usage.total_tokens == response.usage.input_tokens + 9
    assert response.metadata == {"ticket": "42"} and response.instructions == "Answer briefly."


def test_a_streamed_response_sends_the_event_types_in_order(
    api: openai.OpenAI, server: Server
) -> None:
    request: dict[str, Any] = {
        "model": model_name(server),
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Tell me a story"}]}],
        "max_output_tokens": 10,
        "temperature": 0,
    }
    whole = api.responses.create(**request)
    events = list(api.responses.create(**request, stream=True))
    names = [event.type for event in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert set(names[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    streamed = "".join(
        event.delta for event in events if event.type == "response.output_text.delta"
    )
    assert streamed == whole.output_text  # greedy: the same answer either way
    final = events[-1].response
    assert final.output_text == streamed and final.usage is not None


def test_a_function_tool_round_trip(api: openai.OpenAI, server: Server) -> None:
    model = model_name(server)
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    first = api.responses.create(
        model=model,
        input=[question],
        tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=200,
    )
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}
    conversation: Any = [question, call, answer]
    second = api.responses.create(
        model=model, input=conversation, tools=TOOLS, max_output_tokens=6, temperature=0
    )
    assert second.status == "incomplete" and second.output_text
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + 10  # the call and its result


def test_a_required_call_streams_its_arguments(api: openai.OpenAI, server: Server) -> None:
    with api.responses.stream(
        model=model_name(server),
        input="Weather?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=200,
    ) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in names
    assert names[-2:] == ["response.output_item.done", "response.completed"]
    (call,) = final.output
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_text_format_json_schema_is_enforced(api: openai.OpenAI, server: Server) -> None:
    response = api.responses.create(
        model=model_name(server),
        input="The forecast as JSON",
        text={
            "format": {"type": "json_schema", "name": "forecast", "schema": WEATHER, "strict": True}
        },
        max_output_tokens=200,
    )
    jsonschema.validate(json.loads(response.output_text), WEATHER)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_123"),
        ("store", True),
        ("reasoning", {"effort": "high"}),
        ("include", ["reasoning.encrypted_content"]),
    ],
)
def test_state_and_fields_it_cannot_honour_are_refused_by_name(
    server: Server, field: str, value: object
) -> None:
    body = {"model": model_name(server), "input": "hi", field: value}
    problem = assert_problem(httpx.post(server.url + "/v1/responses", json=body, timeout=30), 422)
    assert field in str(problem["detail"])


def test_an_input_item_that_does_not_fit_is_named(server: Server) -> None:
    body = {
        "model": model_name(server),
        "input": [{"role": "user", "content": "hi"}, {"type": "reasoning"}],
    }
    problem = assert_problem(httpx.post(server.url + "/v1/responses", json=body, timeout=30), 422)
    assert "input[1]" in str(problem["detail"])
