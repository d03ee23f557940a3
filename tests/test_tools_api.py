"""Tool calling end to end: the ``openai`` client, the Agents SDK and LangChain.

The generated model writes gibberish, so every call that validates against its
function's schema is the constrained decoding's doing (``tool_choice``
``required`` or a named function). Every test runs twice: on the embedded
model, whose template offers tools Hermes-style (mlx-lm's ``json_tools``
parser reads its calls back), and on a copy whose template has no tool
format, as the default model's (``tests.plain_model``), served through the
generic format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import agents
import anyio
import httpx
import jsonschema
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import SecretStr

from tests.plain_model import plain_model
from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name
from tests.test_tools_generic import strict_json

pytestmark = pytest.mark.timeout(240)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module", params=["template", "generic"])
def server(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tools")
    model = model_dir if request.param == "template" else plain_model(model_dir, tmp / "tiny")
    with running_server(model, tmp) as running:
        yield running


def ask(server: Server, **fields: Any) -> Any:
    return client(server).chat.completions.create(
        model=model_name(server),
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        # Room for the most calls a forced answer may make (8, about 60 tokens each).
        max_tokens=600,
        **fields,
    )


def assert_valid_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(strict_json(call.function.arguments), SCHEMAS[call.function.name])


def test_required_gives_calls_whose_arguments_validate(server: Server) -> None:
    for seed in range(6):
        choice = ask(server, tool_choice="required", seed=seed, temperature=1.0).choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert_valid_calls(choice.message.tool_calls, set(SCHEMAS))


def test_a_named_function_is_the_one_called_once_without_parallel_calls(server: Server) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in range(4):
        choice = ask(server, tool_choice=named, parallel_tool_calls=False, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message.tool_calls, {"get_time"})


def test_streamed_tool_calls_arrive_as_deltas(server: Server) -> None:
    stream = ask(server, tool_choice="required", seed=3, stream=True)
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert reasons[-1] == "tool_calls"
    assert sorted(calls) == list(range(len(calls))) and calls
    for call in calls.values():
        assert call["id"].startswith("call_")
        jsonschema.validate(strict_json(call["arguments"]), SCHEMAS[call["name"]])


def test_a_tool_result_round_trips_through_the_template(server: Server) -> None:
    first = ask(server, tool_choice="required", seed=1).choices[0].message
    call = first.tool_calls[0]
    history: Any = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call.model_dump()],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    answer = client(server).chat.completions.create(
        model=model_name(server),
        messages=history,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=8,
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"tool_choice": "required", "tools": None}, "`tool_choice` needs `tools`"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not in `tools`",
        ),
        ({"tools": [*TOOLS, TOOLS[0]]}, "more than once"),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "if": {}}},
                    }
                ],
            },
            '"if"',
        ),
        (
            {"response_format": {"type": "json_object"}},
            "`response_format`",
        ),
    ],
)
def test_tool_fields_that_cannot_be_honoured_are_refused(
    server: Server, fields: dict[str, Any], detail: str
) -> None:
    body = {
        "model": model_name(server),
        "messages": [{"role": "user", "content": "x"}],
        "tools": TOOLS,
        **fields,
    }
    body = {key: value for key, value in body.items() if value is not None}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    # Contradicting fields are 400 (each is valid alone); a schema that cannot be enforced, 422.
    problem = assert_problem(response, 422 if detail == '"if"' else 400)
    assert detail in str(problem["detail"])


def test_an_openai_agents_sdk_agent_calls_a_tool_and_answers(server: Server) -> None:
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny"

    async def run() -> Any:
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0) as api:
            model = agents.OpenAIChatCompletionsModel(model=model_name(server), openai_client=api)
            agent = agents.Agent(
                name="forecaster",
                instructions="Answer with the weather.",
                tools=[get_weather],
                model=model,
                model_settings=agents.ModelSettings(
                    tool_choice="required", max_tokens=60, extra_body={"seed": 5}
                ),
            )
            return await agents.Runner.run(agent, "Weather in Paris?", max_turns=4)

    agents.set_tracing_disabled(True)
    result = anyio.run(run)
    assert seen and seen[0] in ("Paris", "Rome"), "the SDK ran the tool the model called"
    assert isinstance(result.final_output, str)


def test_a_langchain_bind_tools_round_trip(server: Server) -> None:
    @tool
    def get_time(zone: Literal["UTC", "CET", "JST"]) -> str:
        """The time in a time zone."""
        return f"12:00 {zone}"

    model = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=SecretStr("unused"),
        model=model_name(server),
        max_completion_tokens=60,
        seed=2,
        max_retries=0,
    )
    forced = model.bind_tools([get_time], tool_choice="required")
    history: list[Any] = [HumanMessage("What time is it in Tokyo?")]
    asked = forced.invoke(history)
    assert asked.tool_calls and asked.tool_calls[0]["name"] == "get_time"
    call = asked.tool_calls[0]
    assert call["args"]["zone"] in ("UTC", "CET", "JST")
    history += [asked, ToolMessage(get_time.invoke(call["args"]), tool_call_id=call["id"])]
    answer = model.bind_tools([get_time]).invoke(history)
    assert isinstance(answer.content, str)
