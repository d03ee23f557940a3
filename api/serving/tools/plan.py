"""Tool calling: what the template is given, what is forced, and what is parsed back.

The model's own tool-call syntax (:mod:`api.serving.tools.syntax`) decides how tools
are read back from its answer. ``tool_choice: "required"`` and a named
function are forced by a grammar in that syntax whose arguments follow the
function's ``parameters``; syntaxes without a known grammar are parsed for
``auto`` but refused for forced calls, by name. A model whose template has
no tool format gets the generic one (:mod:`api.serving.tools.generic`):
tools and tool history written into the prompt as text.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from actors.generation.engine.constraints import ConstraintError, check
from api.http.problems import HTTPProblem
from api.openai.bodies import CalledFunction, ToolCallOut
from api.openai.request_types import ChatCompletionRequest, NamedToolChoice, ToolDefinition
from api.serving.tools.generic import GENERIC_SYNTAX
from api.serving.tools.syntax import ToolSyntax

MAX_PARALLEL_CALLS = 8
"""Most calls a forced turn may make when ``parallel_tool_calls`` allows several."""


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request's tools mean for its prompt, its decoding and its answer."""

    template_tools: list[dict[str, Any]] | None = None
    """Tools as ``apply_chat_template(tools=...)`` takes them; ``None``: none offered."""
    grammar: str | None = None
    """A forced call's grammar; ``None``: the model chooses."""
    syntax: ToolSyntax | None = None
    """How to find calls in the answer; ``None``: the answer is only text."""
    tools: tuple[ToolDefinition, ...] = ()
    single: bool = False
    """``parallel_tool_calls: false``: at most the first call is kept."""
    generic: bool = False
    """The template has no tool format: tools and tool history go into the prompt as text."""


def plan_tools(body: ChatCompletionRequest, tokenizer: Any) -> ToolPlan:
    """The plan for ``body``'s tools, or the problem that says why they cannot be honoured.

    Fields that contradict each other are 400s (as OpenAI answers them): each
    is valid alone, so no schema in ``/openapi.json`` can state the rule.
    """
    tools = tuple(body.tools or ())
    choice = body.tool_choice
    own = ToolSyntax.of(tokenizer)
    generic = own is None
    if not tools:
        if choice not in (None, "none", "auto"):
            raise HTTPProblem(
                400, "conflicting-fields", "`tool_choice` needs `tools` to choose from"
            )
        return ToolPlan(generic=generic)
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise HTTPProblem(400, "conflicting-fields", "`tools` names a function more than once")
    if choice == "none":
        # The model is not to call any: tools are neither offered nor parsed.
        return ToolPlan(generic=generic)
    syntax = own or GENERIC_SYNTAX
    forced = _forced(tools, choice)
    single = body.parallel_tool_calls is False
    grammar = None if forced is None else _call_grammar(syntax, forced, single)
    return ToolPlan(
        template_tools=None if generic else [msgspec_to_builtins(tool) for tool in tools],
        grammar=grammar,
        syntax=syntax,
        tools=tools,
        single=single,
        generic=generic,
    )


def msgspec_to_builtins(tool: ToolDefinition) -> dict[str, Any]:
    """A tool as templates read it: plain dicts, unset fields left out."""
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description is not None:
        function["description"] = tool.function.description
    function["parameters"] = tool.function.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _forced(tools: tuple[ToolDefinition, ...], choice: Any) -> list[ToolDefinition] | None:
    """The tools one of which must be called; ``None`` if the model may answer in text."""
    if choice == "required":
        return list(tools)
    if isinstance(choice, NamedToolChoice):
        named = [tool for tool in tools if tool.function.name == choice.function.name]
        if not named:
            raise HTTPProblem(
                400, "conflicting-fields", "`tool_choice` names a function that is not in `tools`"
            )
        return named
    return None


def _call_grammar(syntax: ToolSyntax, tools: list[ToolDefinition], single: bool) -> str:
    """One call (or up to :data:`MAX_PARALLEL_CALLS`) of ``tools``, arguments per their schema."""
    if syntax.shape is None:
        raise HTTPProblem(
            422,
            "unsupported-field",
            "`tool_choice`: forcing a tool call is not supported for this model's tool-call format",
        )
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                syntax.arguments_key: tool.function.parameters or {"type": "object"},
            },
            "required": ["name", syntax.arguments_key],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    grammar = syntax.call_grammar(calls, 1 if single else MAX_PARALLEL_CALLS)
    try:
        check(grammar)
    except ConstraintError as exc:
        raise HTTPProblem(
            422,
            "unsupported-schema",
            f"`tools`: a function's `parameters` cannot be enforced: {exc}",
        ) from None
    return grammar


def new_call(name: str, arguments: str) -> ToolCallOut:
    """A tool call in OpenAI's shape, with a fresh id; ``arguments`` is JSON text."""
    return ToolCallOut(
        id=f"call_{uuid.uuid4().hex[:24]}", function=CalledFunction(name=name, arguments=arguments)
    )
