"""Tools on a model whose chat template has no tool format: one generic format, in the prompt.

Many models people run locally (SmolLM2, the default, among them) have a chat
template that ignores ``tools``. llama.cpp's server still serves tool calls
on them with a generic JSON format described in the system prompt; this is
the same idea with Hermes's markers, which small models have seen often in
training and for which mlx-lm ships a parser (``json_tools``). The system
prompt gains, after any system text of the request::

    You can call functions. Their definitions, as JSON:
    <tools>
    {"name": "get_weather", "description": "...", "parameters": {...}}
    </tools>
    To call functions, answer with nothing but one line per call:
    <tool_call>{"name": "<a function's name>", "arguments": {<its arguments>}}</tool_call>
    The results come back in the next user turn, each as
    <tool_response>{"name": "<the function's name>", "content": "<its result>"}</tool_response>.

An earlier assistant turn's calls are written back the same way after its
text, and ``tool`` turns become one user turn of ``<tool_response>`` blocks
(templates without tools rarely know a ``tool`` role). A forced call
(``tool_choice`` ``required`` or named) is this syntax's grammar, as for
Hermes templates; ``auto`` calls are read back by the same parser.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from mlx_lm.tool_parsers import json_tools

from api.openai.request_types import ToolDefinition
from api.serving.tools.syntax import ToolSyntax

CALL_START: Final = json_tools.tool_call_start
CALL_END: Final = json_tools.tool_call_end
RESPONSE_START: Final = "<tool_response>"
RESPONSE_END: Final = "</tool_response>"

GENERIC_SYNTAX: Final = ToolSyntax(CALL_START, CALL_END, json_tools.parse_tool_call, "tagged")
"""How calls are written and read on a model whose template has no tool format."""


def tools_prompt(tools: Sequence[ToolDefinition]) -> str:
    """The system text that offers ``tools`` and says how to call them."""
    definitions = "\n".join(json.dumps(_definition(tool), ensure_ascii=False) for tool in tools)
    return (
        "You can call functions. Their definitions, as JSON:\n"
        f"<tools>\n{definitions}\n</tools>\n"
        "To call functions, answer with nothing but one line per call:\n"
        f'{CALL_START}{{"name": "<a function\'s name>", "arguments": {{<its arguments>}}}}'
        f"{CALL_END}\n"
        "The results come back in the next user turn, each as\n"
        f'{RESPONSE_START}{{"name": "<the function\'s name>", "content": "<its result>"}}'
        f"{RESPONSE_END}."
    )


def _definition(tool: ToolDefinition) -> dict[str, Any]:
    function = tool.function
    definition: dict[str, Any] = {"name": function.name}
    if function.description:
        definition["description"] = function.description
    definition["parameters"] = function.parameters or {"type": "object", "properties": {}}
    return definition


def generic_turns(
    turns: list[dict[str, Any]], tools: Sequence[ToolDefinition]
) -> list[dict[str, Any]]:
    """Chat turns (as templates take them) with tools and tool history written as text.

    ``tools`` (offered to the model) go into the system turn; with none, only
    the history is rewritten.
    """
    names: dict[str, str] = {}  # tool call id -> function name, for the responses
    rewritten: list[dict[str, Any]] = []
    for turn in turns:
        match turn:
            case {"role": "assistant", "tool_calls": [*calls]}:
                names.update((call["id"], call["function"]["name"]) for call in calls)
                text = (turn.get("content") or "") + "".join(_call_text(call) for call in calls)
                rewritten.append({"role": "assistant", "content": text})
            case {"role": "tool"}:
                name = names.get(turn.get("tool_call_id") or "", turn.get("name") or "")
                _append_user(rewritten, _response_text(name, turn.get("content") or ""), True)
            case {"role": "user"}:
                _append_user(rewritten, turn.get("content") or "", False)
            case _:
                rewritten.append({**turn, "content": turn.get("content") or ""})
    if tools:
        rewritten = _with_system(rewritten, tools_prompt(tools))
    # Without the bookkeeping key: templates see only what they know.
    return [{k: v for k, v in turn.items() if k != "_tool_results"} for turn in rewritten]


def _call_text(call: dict[str, Any]) -> str:
    function = call["function"]
    written = {"name": function["name"], "arguments": function["arguments"]}
    return f"{CALL_START}{json.dumps(written, ensure_ascii=False)}{CALL_END}\n"


def _response_text(name: str, content: str) -> str:
    written = json.dumps({"name": name, "content": content}, ensure_ascii=False)
    return f"{RESPONSE_START}{written}{RESPONSE_END}"


def _append_user(turns: list[dict[str, Any]], text: str, from_tool: bool) -> None:
    """A user turn; one that follows tool results joins their turn (roles keep alternating)."""
    last = turns[-1] if turns else None
    if last is not None and last.get("_tool_results"):
        last["content"] += "\n" + text
        last["_tool_results"] = from_tool or last["_tool_results"]
        return
    turns.append({"role": "user", "content": text, "_tool_results": from_tool})


def _with_system(turns: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if turns and turns[0]["role"] == "system":
        first = turns[0]
        joined = f"{first['content']}\n\n{text}" if first["content"] else text
        return [{**first, "content": joined}, *turns[1:]]
    return [{"role": "system", "content": text}, *turns]
