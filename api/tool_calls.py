"""Finding tool calls in generated text, whole or as it streams.

Text between the model's start and end markers is handed to mlx-lm's parser
for that syntax. What parses becomes a call; what does not (or a call cut off
by ``max_tokens``) stays in the text, as vLLM does, so nothing the model wrote
is lost. Streaming holds back only what may still become a marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.openai_types import ToolCallOut
from api.tools import ToolPlan, new_call


@dataclass
class ToolCallScanner:
    """Splits text into content and tool calls, fed piece by piece."""

    plan: ToolPlan
    calls: list[ToolCallOut] = field(default_factory=list)
    _pending: str = ""

    def feed(self, text: str) -> tuple[str, list[ToolCallOut]]:
        """Content that is now certain, and the calls completed by ``text``."""
        syntax = self.plan.syntax
        assert syntax is not None
        self._pending += text
        content, found = "", []
        while True:
            begin = self._pending.find(syntax.start)
            if begin < 0:
                keep = _partial_suffix(self._pending, syntax.start)
                content += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                break
            content += self._pending[:begin]
            self._pending = self._pending[begin:]
            finish = self._pending.find(syntax.end, len(syntax.start))
            if finish < 0:
                break  # inside a call: wait for its end
            raw = self._pending[: finish + len(syntax.end)]
            self._pending = self._pending[finish + len(syntax.end) :]
            call = self._parse(raw[len(syntax.start) : finish])
            if call is None:
                content += raw
            elif not (self.plan.single and self.calls):
                self.calls.append(call)
                found.append(call)
        return content, found

    def flush(self) -> str:
        """What is left at the end: an unfinished call or marker, as text."""
        rest, self._pending = self._pending, ""
        return rest

    def _parse(self, body: str) -> ToolCallOut | None:
        syntax = self.plan.syntax
        assert syntax is not None
        try:
            parsed: Any = syntax.parse(body, [_as_dict(tool) for tool in self.plan.tools])
        except Exception:  # the model's text, not ours: it may be anything
            return None
        if isinstance(parsed, list):  # parsers that read several calls at once
            parsed = parsed[0] if len(parsed) == 1 else None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
            return None
        return new_call(parsed["name"], parsed.get("arguments", {}))


def _as_dict(tool: Any) -> dict[str, Any]:
    function = tool.function
    return {
        "type": "function",
        "function": {"name": function.name, "parameters": function.parameters or {}},
    }


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def split_tool_calls(plan: ToolPlan, text: str) -> tuple[str, list[ToolCallOut]]:
    """The whole answer as (content, calls)."""
    scanner = ToolCallScanner(plan)
    content, calls = scanner.feed(text)
    return content + scanner.flush(), calls
