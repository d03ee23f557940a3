"""Anthropic's Messages replies: one ``message`` body, or its event stream.

A stream goes ``message_start``, ``ping``, then for each content block
``content_block_start``, its deltas (``text_delta``, or one
``input_json_delta`` with a tool call's whole input) and
``content_block_stop``; then ``message_delta`` with the stop reason and the
usage, and ``message_stop``. Tool calls are found in the text as for chat
completions (:mod:`api.serving.tools.scanner`); a call whose arguments are not a JSON
object cannot be a ``tool_use`` (its ``input`` is an object) and stays text.

Usage follows Anthropic's meaning: ``input_tokens`` are the prompt tokens
computed for this request, ``cache_read_input_tokens`` those the prefix cache
supplied.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from actors.generation.protocol import Finished, FinishReason
from api.anthropic.message_types import (
    MessageResponse,
    MessagesUsage,
    StopReason,
    TextOut,
    ToolUseOut,
    error_body,
)
from api.http.asgi import Responder
from api.http.problems import Problem
from api.openai.bodies import ToolCallOut
from api.serving.tools.json_text import is_json_object
from api.serving.tools.plan import ToolPlan
from api.serving.writers import (
    SSE_HEADERS,
    CallScanningWriter,
    ChoiceResult,
    ReplyContext,
    named_event,
)


class AnthropicReply(CallScanningWriter):
    """The response of one Messages request (one choice)."""

    def __init__(self, context: ReplyContext, streaming: bool, tools: ToolPlan | None) -> None:
        super().__init__(tools)
        self.context = context
        self.streaming = streaming
        self._block = 0
        """Index of the next content block."""
        self._text_open = False
        self._called = False
        self._stop: tuple[StopReason, str | None] = ("end_turn", None)

    @property
    def message_id(self) -> str:
        """The message's id, naming the request."""
        return "msg_" + self.context.request_id

    async def send_choice_end(self, respond: Responder, end: Finished, index: int = 0) -> None:
        """What the text held back; the stop reason waits for :meth:`send_done`."""
        await self._flush(respond)
        self._stop = stop_reason(end, self._called)

    async def send_done(self, respond: Responder, end: Finished) -> None:
        """Close the open block, then ``message_delta`` and ``message_stop``."""
        await self._ensure_started(respond)
        reason, sequence = self._stop
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage_of(end),
        }
        events = self._close_text() + named_event("message_delta", delta)
        events += named_event("message_stop", {"type": "message_stop"})
        await respond.chunk(events, more=False)

    async def send_whole(
        self, respond: Responder, results: list[ChoiceResult], end: Finished
    ) -> None:
        """The whole ``message``."""
        result = results[0]
        text, calls = self._split(result.text)
        content: list[TextOut | ToolUseOut] = []
        uses: list[ToolUseOut] = []
        for call in calls:
            use = _tool_use(call)
            if use is None:
                text += _as_text(call)
            else:
                uses.append(use)
        if text:
            content.append(TextOut(text=text))
        content.extend(uses)
        reason, sequence = stop_reason(result.end, bool(uses))
        message = MessageResponse(
            id=self.message_id,
            model=self.context.model,
            content=content,
            stop_reason=reason,
            stop_sequence=sequence,
            usage=usage_of(end),
        )
        await respond.json(200, message)

    async def send_error(self, respond: Responder, problem: Problem) -> None:
        """End a started stream with Anthropic's ``error`` event, naming the request."""
        body = error_body(problem.status, problem.detail, self.context.request_id)
        await respond.chunk(named_event("error", body), more=False)

    async def _send(self, respond: Responder, text: str, calls: list[ToolCallOut]) -> None:
        if not text and not calls:
            return
        await self._ensure_started(respond)
        uses: list[ToolUseOut] = []
        for call in calls:
            use = _tool_use(call)
            if use is None:
                text += _as_text(call)
            else:
                uses.append(use)
        events = self._text_delta(text) if text else b""
        for use in uses:
            events += self._close_text() + self._tool_block(use)
        await respond.chunk(events)

    def _text_delta(self, text: str) -> bytes:
        events = b""
        if not self._text_open:
            self._text_open = True
            block = {"type": "text", "text": ""}
            events += named_event(
                "content_block_start",
                {"type": "content_block_start", "index": self._block, "content_block": block},
            )
        delta = {"type": "text_delta", "text": text}
        return events + named_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._block, "delta": delta},
        )

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        self._block += 1
        return named_event(
            "content_block_stop", {"type": "content_block_stop", "index": self._block - 1}
        )

    def _tool_block(self, use: ToolUseOut) -> bytes:
        index, self._block = self._block, self._block + 1
        self._called = True
        start = {"type": "tool_use", "id": use.id, "name": use.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": bytes(use.input).decode()}
        return (
            named_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            + named_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            + named_event("content_block_stop", {"type": "content_block_stop", "index": index})
        )

    async def _ensure_started(self, respond: Responder) -> None:
        if respond.started:
            return
        await respond.start(200, "text/event-stream", SSE_HEADERS)
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.context.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.context.prompt_tokens, "output_tokens": 0},
        }
        events = named_event("message_start", {"type": "message_start", "message": message})
        await respond.chunk(events + named_event("ping", {"type": "ping"}))


def stop_reason(end: Finished, called: bool) -> tuple[StopReason, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for how generation ended."""
    if end.reason is FinishReason.LENGTH:
        return "max_tokens", None
    if end.stop_string is not None:
        return "stop_sequence", end.stop_string
    return ("tool_use" if called else "end_turn"), None


def usage_of(end: Finished) -> MessagesUsage:
    """Anthropic's usage: prompt tokens computed, and those read from the prefix cache."""
    return MessagesUsage(
        input_tokens=end.prompt_tokens - end.cached_tokens,
        output_tokens=end.completion_tokens,
        cache_read_input_tokens=end.cached_tokens,
    )


def _tool_use(call: ToolCallOut) -> ToolUseOut | None:
    """``call`` as a ``tool_use`` block; ``None`` if its arguments are not a JSON object."""
    if not is_json_object(call.function.arguments):
        return None
    return ToolUseOut(
        id="toolu_" + call.id.removeprefix("call_"),
        name=call.function.name,
        input=msgspec.Raw(call.function.arguments.encode()),  # as written: never re-serialised
    )


def _as_text(call: ToolCallOut) -> str:
    return json.dumps({"name": call.function.name, "arguments": call.function.arguments})
