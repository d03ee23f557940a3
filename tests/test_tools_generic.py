"""Tools on a model whose template has no tool format, and arguments that are always JSON.

The prompt rewriting and the argument writing are checked as functions; the
Anthropic and Responses clients run against a real server on the tiny model
with SmolLM2's kind of template (``tests.plain_model``). The ``openai``
client, the Agents SDK and LangChain run on it in ``test_tools_api``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import msgspec
import pytest

from api.openai.request_types import ToolDefinition
from api.serving.tools.generic import GENERIC_SYNTAX, generic_turns, tools_prompt
from api.serving.tools.json_text import arguments_text, is_json_object
from api.serving.tools.plan import ToolPlan
from api.serving.tools.scanner import split_tool_calls
from tests.plain_model import plain_model
from tests.server import Server, running_server
from tests.test_anthropic_api import WEATHER
from tests.test_api import client, model_name

pytestmark = pytest.mark.timeout(240)

DEFINITION = msgspec.convert(
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The forecast", "parameters": WEATHER},
    },
    ToolDefinition,
)


def strict_json(text: str) -> Any:
    """``text`` parsed as RFC 8259 JSON: ``NaN`` and ``Infinity`` are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# -- the prompt ------------------------------------------------------------------------


def test_tools_join_the_system_turn_and_history_becomes_text() -> None:
    turns: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 1}},
                },
                {
                    "id": "b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Rome", "days": 1}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
        {"role": "user", "content": "Thanks. Which is warmer?"},
    ]
    rewritten = generic_turns(turns, [DEFINITION])
    assert [turn["role"] for turn in rewritten] == ["system", "user", "assistant", "user"]
    assert all(set(turn) == {"role", "content"} for turn in rewritten)
    assert all(isinstance(turn["content"], str) for turn in rewritten)
    system = rewritten[0]["content"]
    assert system.startswith("Be brief.\n\n") and system.endswith(tools_prompt([DEFINITION]))
    assert json.dumps(WEATHER) in system  # the schema, verbatim
    assert rewritten[2]["content"] == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}'
        "</tool_call>\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}'
        "</tool_call>\n"
    )
    assert rewritten[3]["content"] == (
        '<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>\n'
        '<tool_response>{"name": "get_weather", "content": "rain"}</tool_response>\n'
        "Thanks. Which is warmer?"
    )
    # Without tools offered (tool_choice none), only the history is rewritten.
    assert generic_turns(turns, [])[0] == {"role": "system", "content": "Be brief."}
    assert generic_turns(turns[1:2], [DEFINITION])[0]["role"] == "system"


# -- arguments are JSON ----------------------------------------------------------------


def test_arguments_keep_numbers_as_written_and_refuse_what_is_not_json() -> None:
    plan = ToolPlan(syntax=GENERIC_SYNTAX, tools=(DEFINITION,))
    huge = (
        '<tool_call>{"name": "get_weather", "arguments": {"days": 1e400, "x": [2.50]}}</tool_call>'
    )
    content, calls = split_tool_calls(plan, huge)
    assert content == ""
    assert calls[0].function.arguments == '{"days": 1e400, "x": [2.50]}'
    strict_json(calls[0].function.arguments)
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = (
            f'<tool_call>{{"name": "get_weather", "arguments": {{"days": {literal}}}}}</tool_call>'
        )
        assert split_tool_calls(plan, text) == (text, [])  # refused: it stays text
    finite = '<tool_call>{"name": "get_weather", "arguments": {"days": 3}}</tool_call>'
    assert split_tool_calls(plan, finite)[1][0].function.arguments == '{"days": 3}'
    assert arguments_text('{"a": 1}', "", "f", 0) == '{"a": 1}'
    assert arguments_text("not json", "", "f", 0) is None
    assert arguments_text({"a": float("nan")}, "{}", "f", 0) is None
    assert is_json_object(' {"a": 1} ') and not is_json_object('{"a": NaN}')
    assert not is_json_object("[1]") and not is_json_object('{"a": 1} x')


# -- the other protocols on a template without tools ------------------------------------


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("generic")
    with running_server(plain_model(model_dir, tmp / "tiny"), tmp) as running:
        yield running


def test_anthropic_tool_use_on_a_template_without_tools(server: Server) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="-", max_retries=0) as api:
        check_anthropic_tool_use(api, server)


def check_anthropic_tool_use(api: anthropic.Anthropic, server: Server) -> None:
    tools: Any = [{"name": "get_weather", "description": "The forecast", "input_schema": WEATHER}]
    # One call each: with parallel calls a forced answer may go on calling up to max_tokens.
    choices: list[Any] = [
        {"type": "any", "disable_parallel_tool_use": True},
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ]
    for seed, choice in enumerate(choices):
        message = api.messages.create(
            model=model_name(server),
            max_tokens=200,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=tools,
            tool_choice=choice,
            extra_body={"seed": seed},
        )
        assert message.stop_reason == "tool_use"
        uses = [block for block in message.content if block.type == "tool_use"]
        assert uses and all(use.name == "get_weather" for use in uses)
        for use in uses:
            jsonschema.validate(use.input, WEATHER)
    with api.messages.stream(
        model=model_name(server),
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=tools,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        final = stream.get_final_message()
    streamed = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed
    jsonschema.validate(streamed[0].input, WEATHER)


def test_responses_function_calls_on_a_template_without_tools(server: Server) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    response = client(server).responses.create(
        model=model_name(server),
        input="Weather in Paris?",
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=200,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(call.name == "get_weather" for call in calls)
    for call in calls:
        jsonschema.validate(strict_json(call.arguments), WEATHER)
