"""Finding tool calls in generated text, whole or as it streams.

Text between the model's start and end markers is handed to the parser for
that syntax. What parses becomes calls; what does not (or a call cut off by
``max_tokens``) stays in the text, as vLLM does, so nothing the model wrote is
lost. Streaming holds back only what may still become a call: a partial start
marker; a call until its end marker; a call with no end marker (Mistral) or
no markers at all (Llama 3 JSON, whose answer is the call when it starts with
``{``) until the answer ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from api.openai.bodies import ToolCallOut
from api.serving.tools.json_text import arguments_text
from api.serving.tools.plan import ToolPlan, new_call
from api.serving.tools.syntax import PYTHON_TAG


@dataclass
class ToolCallScanner:
    """Splits text into content and tool calls, fed piece by piece."""

    plan: ToolPlan
    calls: list[ToolCallOut] = field(default_factory=list)
    _pending: str = ""
    _plain: bool = False
    """A marker-less syntax whose answer turned out to be text: nothing more to find."""

    def feed(self, text: str) -> tuple[str, list[ToolCallOut]]:
        """Content that is now certain, and the calls completed by ``text``."""
        syntax = self.plan.syntax
        assert syntax is not None
        self._pending += text
        if self._plain:
            return self._take_all(), []
        if not syntax.start:
            return self._whole_answer()
        content, found = "", list[ToolCallOut]()
        while True:
            begin = self._pending.find(syntax.start)
            if begin < 0:
                keep = _partial_suffix(self._pending, syntax.start)
                content += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                return content, found
            content += self._pending[:begin]
            self._pending = self._pending[begin:]
            if not syntax.end:
                return content, found  # the call runs to the end of the answer
            finish = self._pending.find(syntax.end, len(syntax.start))
            if finish < 0:
                return content, found  # inside a call: wait for its end
            raw = self._pending[: finish + len(syntax.end)]
            self._pending = self._pending[finish + len(syntax.end) :]
            parsed = self._parse(raw[len(syntax.start) : finish])
            if parsed is None:
                content += raw
            found += parsed or []

    def flush(self) -> tuple[str, list[ToolCallOut]]:
        """At the end of the answer: a call that runs to the end, or what is left as text."""
        syntax = self.plan.syntax
        assert syntax is not None
        rest = self._take_all()
        if self._plain or not rest.strip() or (syntax.start and syntax.end):
            return rest, []  # text, a partial marker, or a call cut short before its end
        if syntax.start and not rest.startswith(syntax.start):
            return rest, []  # a partial marker
        parsed = self._parse(rest[len(syntax.start) :])
        return ("", parsed) if parsed is not None else (rest, [])

    def _whole_answer(self) -> tuple[str, list[ToolCallOut]]:
        """Marker-less syntax: the answer is a call if it starts like one."""
        head = self._pending.lstrip()
        if not head or (len(head) < len(PYTHON_TAG) and PYTHON_TAG.startswith(head)):
            return "", []  # nothing decisive yet
        if head.startswith(("{", "[", PYTHON_TAG)):
            return "", []  # a call, parsed when the answer ends
        self._plain = True
        return self._take_all(), []

    def _take_all(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _parse(self, body: str) -> list[ToolCallOut] | None:
        """The calls ``body`` holds, as many as the plan keeps; ``None`` if it holds none."""
        syntax = self.plan.syntax
        assert syntax is not None
        try:
            parsed: Any = syntax.parse(body, [_as_dict(tool) for tool in self.plan.tools])
        except Exception:  # the model's text, not ours: it may be anything
            return None
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items or not all(_is_call(item) for item in items):
            return None
        calls, seen = [], Counter[str]()
        for item in items:
            name = item["name"]
            text = arguments_text(item.get("arguments", {}), body, name, seen[name])
            if text is None:
                return None  # not writable as JSON (NaN, Infinity): the block stays text
            seen[name] += 1
            calls.append(new_call(name, text))
        if self.plan.single:
            calls = calls[: max(0, 1 - len(self.calls))]
        self.calls += calls
        return calls


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str)


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
    rest, more = scanner.flush()
    return content + rest, calls + more
