"""Tool-call syntaxes: parsing answers whole and streamed, and forcing calls by grammar."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import llguidance
import pytest
from mlx_lm.tool_parsers import json_tools, mistral

from actors.generation.engine.constraints import llg_tokenizer
from api.openai.request_types import FunctionDefinition, ToolDefinition
from api.serving.tools.plan import ToolPlan
from api.serving.tools.scanner import ToolCallScanner, split_tool_calls
from api.serving.tools.syntax import ToolSyntax, parse_llama3_calls

pytestmark = pytest.mark.timeout(60)

HERMES = ToolSyntax("<tool_call>", "</tool_call>", json_tools.parse_tool_call, "tagged")
MISTRAL = ToolSyntax("[TOOL_CALLS]", "", mistral.parse_tool_call, "mistral")
LLAMA3 = ToolSyntax("", "", parse_llama3_calls, "llama3")
TOOL = ToolDefinition(
    type="function",
    function=FunctionDefinition(
        name="get_time",
        parameters={
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    ),
)
ANSWERS = {
    "tagged": 'Sure. <tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>',
    "mistral": '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "UTC"}}]',
    "llama3": '{"name": "get_time", "parameters": {"zone": "UTC"}}',
}
SYNTAXES = {"tagged": HERMES, "mistral": MISTRAL, "llama3": LLAMA3}


def plan(syntax: ToolSyntax, single: bool = False) -> ToolPlan:
    return ToolPlan(syntax=syntax, tools=(TOOL,), single=single)


def streamed(syntax: ToolSyntax, text: str) -> tuple[str, list[Any]]:
    """Feed ``text`` three characters at a time, as a stream would."""
    scanner = ToolCallScanner(plan(syntax))
    content, calls = "", list[Any]()
    for start in range(0, len(text), 3):
        more, found = scanner.feed(text[start : start + 3])
        content, calls = content + more, calls + found
    rest, found = scanner.flush()
    return content + rest, calls + found


@pytest.mark.parametrize("shape", SYNTAXES)
def test_each_syntax_is_read_whole_and_streamed_alike(shape: str) -> None:
    for read in (lambda s, t: split_tool_calls(plan(s), t), streamed):
        content, calls = read(SYNTAXES[shape], ANSWERS[shape])
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("get_time", {"zone": "UTC"})
        ]
        assert content == ("Sure. " if shape == "tagged" else "")


@pytest.mark.parametrize("shape", SYNTAXES)
def test_text_that_is_not_a_call_stays_text(shape: str) -> None:
    for text in ("Hello there.", "Hello {not json", '{"no": "name"}', "<tool_call>{broken"):
        content, calls = streamed(SYNTAXES[shape], text)
        assert (content, calls) == (text, [])


def test_several_calls_and_parallel_tool_calls_false() -> None:
    two = '{"name": "get_time", "parameters": {"zone": "UTC"}}; {"name": "x", "parameters": {}}'
    assert [c.function.name for c in split_tool_calls(plan(LLAMA3), two)[1]] == ["get_time", "x"]
    assert len(split_tool_calls(plan(LLAMA3, single=True), two)[1]) == 1
    tagged = ANSWERS["tagged"] + ANSWERS["tagged"].removeprefix("Sure. ")
    assert len(split_tool_calls(plan(HERMES), tagged)[1]) == 2
    assert len(split_tool_calls(plan(HERMES, single=True), tagged)[1]) == 1


@pytest.mark.parametrize("shape", SYNTAXES)
def test_the_forced_grammar_accepts_what_the_parser_reads(shape: str, loaded_model: Any) -> None:
    syntax = SYNTAXES[shape]
    key = syntax.arguments_key
    call = {
        "type": "object",
        "properties": {"name": {"const": "get_time"}, key: TOOL.function.parameters},
        "required": ["name", key],
        "additionalProperties": False,
    }
    grammar = syntax.call_grammar([call], 2)
    compact = {
        "tagged": '<tool_call>{"name":"get_time","arguments":{"zone":"CET"}}</tool_call>',
        "mistral": '[TOOL_CALLS][{"name":"get_time","arguments":{"zone":"CET"}}]',
        "llama3": '{"name":"get_time","parameters":{"zone":"CET"}}',
    }[shape]
    tokenizer = llg_tokenizer(loaded_model.tokenizer)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    assert matcher.consume_tokens(tokenizer.tokenize_str(compact)), matcher.get_error()
    assert matcher.is_accepting()
    bad = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    wrong = compact.replace("CET", "PST")
    assert not bad.consume_tokens(tokenizer.tokenize_str(wrong))
    calls = split_tool_calls(plan(syntax), compact)[1]
    assert [json.loads(c.function.arguments) for c in calls] == [{"zone": "CET"}]


def test_the_syntax_is_found_from_the_tokenizer() -> None:
    hermes = SimpleNamespace(
        has_tool_calling=True,
        tool_parser=json_tools.parse_tool_call,
        tool_call_start="<tool_call>",
        tool_call_end="</tool_call>",
        chat_template="",
    )
    assert ToolSyntax.of(hermes) == HERMES
    llama = SimpleNamespace(chat_template="... <|python_tag|> ...", has_tool_calling=False)
    found = ToolSyntax.of(llama)
    assert found is not None and found.shape == "llama3"
    assert ToolSyntax.of(SimpleNamespace(chat_template="{{ messages }}")) is None
