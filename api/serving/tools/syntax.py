"""How a model writes tool calls: markers, its parser, and the grammar of a forced call.

mlx-lm infers the syntax from the chat template (or ``tool_parser_type`` in
``tokenizer_config.json``) and ships maintained parsers for about fifteen;
they are used as they are. Llama 3's JSON calls have no markers and no
parser in mlx-lm: the answer itself is the call (``{"name": ...,
"parameters": {...}}``, several separated by ``;``), recognised here from the
template, as vLLM's ``llama3_json`` parser does.

Forcing a call (``tool_choice`` ``required`` or named) needs the grammar of
the syntax; three shapes are known: Hermes/Qwen ``<tool_call>{...}</tool_call>``
(mlx-lm's ``json_tools``), Mistral ``[TOOL_CALLS][{...}]`` and Llama 3 JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import llguidance

PYTHON_TAG: Final = "<|python_tag|>"
_LLAMA3_HINTS: Final = (PYTHON_TAG, '"parameters": dictionary of argument name')
_SHAPES: Final = {
    "mlx_lm.tool_parsers.json_tools": "tagged",
    "mlx_lm.tool_parsers.mistral": "mistral",
}


@dataclass(frozen=True)
class ToolSyntax:
    """How this model writes a tool call, and the parser that reads one."""

    start: str
    """What opens a call; ``""``: the answer itself is the call."""
    end: str
    """What closes a call; ``""``: the call runs to the end of the answer."""
    parse: Callable[[str, Any], Any]
    shape: str | None
    """``tagged``, ``mistral`` or ``llama3`` when a call can be forced by grammar."""

    @classmethod
    def of(cls, tokenizer: Any) -> ToolSyntax | None:
        """The syntax of ``tokenizer`` (mlx-lm's ``TokenizerWrapper``); ``None`` if it has none."""
        parse = getattr(tokenizer, "tool_parser", None)
        if getattr(tokenizer, "has_tool_calling", False) and parse is not None:
            start, end = tokenizer.tool_call_start or "", tokenizer.tool_call_end or ""
            if start:
                return cls(start, end, parse, _SHAPES.get(getattr(parse, "__module__", "")))
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str) and any(hint in template for hint in _LLAMA3_HINTS):
            return cls("", "", parse_llama3_calls, "llama3")
        return None

    def call_grammar(self, calls: list[dict[str, Any]], most: int) -> str:
        """The grammar of 1 to ``most`` calls, each one of ``calls`` (JSON Schemas of a call)."""
        one = {"anyOf": calls, "x-guidance": {"whitespace_flexible": False, "lenient": False}}
        match self.shape:
            case "tagged":
                rules = [
                    f"start: call{{1,{most}}}",
                    f"call: {json.dumps(self.start)} json {json.dumps(self.end)}",
                    f"json: %json {json.dumps(one)}",
                ]
            case "mistral":
                array = {
                    "type": "array",
                    "items": {"anyOf": calls},
                    "minItems": 1,
                    "maxItems": most,
                    "x-guidance": one["x-guidance"],
                }
                rules = [
                    f"start: {json.dumps(self.start)} json",
                    f"json: %json {json.dumps(array)}",
                ]
            case "llama3":
                rules = [
                    f'start: json ("; " json){{0,{most - 1}}}',
                    f"json: %json {json.dumps(one)}",
                ]
            case _:
                raise ValueError("this tool-call syntax cannot be forced")
        return llguidance.LLMatcher.grammar_from_lark("\n".join(rules) + "\n")

    @property
    def arguments_key(self) -> str:
        """The key of a call's arguments in its JSON."""
        return "parameters" if self.shape == "llama3" else "arguments"


def parse_llama3_calls(text: str, tools: Any = None) -> list[dict[str, Any]]:
    """Llama 3 JSON calls: ``{"name", "parameters"}`` objects, separated by ``;``."""
    text = text.strip()
    text = text.removeprefix(PYTHON_TAG).strip()
    decoder = json.JSONDecoder()
    calls, position = [], 0
    while position < len(text):
        value, position = decoder.raw_decode(text, position)
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError("not a tool call")  # noqa: TRY004 - mlx-lm's parsers raise ValueError
        arguments = value.get("parameters", value.get("arguments", {}))
        calls.append({"name": value["name"], "arguments": arguments})
        while position < len(text) and text[position] in "; \n\t":
            position += 1
    if not calls:
        raise ValueError("not a tool call")
    return calls
