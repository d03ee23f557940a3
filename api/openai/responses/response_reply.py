"""OpenAI's Responses replies: one ``response`` object, or its event stream.

A stream goes ``response.created``, ``response.in_progress``, then each output
item: a message (``output_item.added``, ``content_part.added``,
``output_text.delta``..., ``output_text.done``, ``content_part.done``,
``output_item.done``) or a function call (``output_item.added``, one
``function_call_arguments.delta`` with the whole arguments,
``function_call_arguments.done``, ``output_item.done``); it ends with
``response.completed`` (or ``response.incomplete`` at ``max_output_tokens``),
or ``response.failed`` carrying the error. Every event has its
``sequence_number``. Tool calls are found in the text as for chat completions
(:mod:`api.serving.tools.scanner`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.generation.protocol import Finished, FinishReason
from api.http.asgi import Responder
from api.http.problems import Problem
from api.openai.bodies import ToolCallOut
from api.openai.responses.response_types import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputTextPart,
    Response,
    ResponseError,
    ResponseUsage,
)
from api.serving.tools.plan import ToolPlan
from api.serving.writers import (
    SSE_HEADERS,
    CallScanningWriter,
    ChoiceResult,
    ReplyContext,
    named_event,
)


def _item_status(end: Finished) -> str:
    """An output message cut short by ``max_output_tokens`` is ``incomplete``, as OpenAI's are."""
    return "incomplete" if end.reason is FinishReason.LENGTH else "completed"


def _error_code(status: int) -> str:
    """OpenAI's error code for a failed response (the slug goes in the message)."""
    return "rate_limit_exceeded" if status == 429 else "server_error"


class ResponsesReply(CallScanningWriter):
    """The response of one Responses request; ``echo`` holds the request's settings."""

    def __init__(
        self, context: ReplyContext, streaming: bool, tools: ToolPlan | None, echo: Response
    ) -> None:
        super().__init__(tools)
        self.context = context
        self.streaming = streaming
        self._echo = msgspec.structs.replace(
            echo, id="resp_" + context.request_id, created_at=context.created, model=context.model
        )
        self._sequence = 0
        self._items: list[OutputItem] = []
        self._text: str | None = None
        """The open message's text so far (``None``: no message is open)."""

    async def send_choice_end(self, respond: Responder, end: Finished, index: int = 0) -> None:
        """What the text held back; the response's end waits for :meth:`send_done`."""
        await self._flush(respond)

    async def send_done(self, respond: Responder, end: Finished) -> None:
        """Close the open message, then ``response.completed`` (or ``.incomplete``)."""
        await self._ensure_started(respond)
        events = self._close_message(_item_status(end))
        response = self._response(end)
        name = "response.completed" if response.status == "completed" else "response.incomplete"
        events += self._event(name, {"response": response})
        await respond.chunk(events, more=False)

    async def send_whole(
        self, respond: Responder, results: list[ChoiceResult], end: Finished
    ) -> None:
        """The whole ``response`` object."""
        text, calls = self._split(results[0].text)
        if text:
            self._items.append(self._message(text, _item_status(results[0].end)))
        self._items.extend(self._call(call) for call in calls)
        await respond.json(200, self._response(end))

    async def send_error(self, respond: Responder, problem: Problem) -> None:
        """End a started stream with ``response.failed``, its error naming the request."""
        error = ResponseError(
            code=_error_code(problem.status),
            message=f"{problem.detail} ({problem.slug}, request {self.context.request_id})",
        )
        failed = msgspec.structs.replace(
            self._echo, status="failed", output=list(self._items), error=error
        )
        await respond.chunk(self._event("response.failed", {"response": failed}), more=False)

    async def _send(self, respond: Responder, text: str, calls: list[ToolCallOut]) -> None:
        if not text and not calls:
            return
        await self._ensure_started(respond)
        events = self._text_delta(text) if text else b""
        for call in calls:
            events += self._close_message() + self._call_events(self._call(call))
        await respond.chunk(events)

    def _text_delta(self, text: str) -> bytes:
        events = b""
        if self._text is None:
            self._text = ""
            item = self._message("", "in_progress", parts=[])
            part = OutputTextPart(text="")
            events += self._event("response.output_item.added", self._at(item=item))
            events += self._event("response.content_part.added", self._in_part(part=part))
        self._text += text
        delta = self._in_part(delta=text, logprobs=[])
        return events + self._event("response.output_text.delta", delta)

    def _close_message(self, status: str = "completed") -> bytes:
        if self._text is None:
            return b""
        text, self._text = self._text, None
        item = self._message(text, status)
        events = self._event("response.output_text.done", self._in_part(text=text, logprobs=[]))
        events += self._event("response.content_part.done", self._in_part(part=item.content[0]))
        events += self._event("response.output_item.done", self._at(item=item))
        self._items.append(item)
        return events

    def _call_events(self, call: OutputFunctionCall) -> bytes:
        started = msgspec.structs.replace(call, arguments="", status="in_progress")
        events = self._event("response.output_item.added", self._at(item=started))
        where = {"item_id": call.id, "output_index": len(self._items)}
        events += self._event(
            "response.function_call_arguments.delta", {**where, "delta": call.arguments}
        )
        events += self._event(
            "response.function_call_arguments.done",
            {**where, "name": call.name, "arguments": call.arguments},
        )
        events += self._event("response.output_item.done", self._at(item=call))
        self._items.append(call)
        return events

    def _message(
        self, text: str, status: Any, parts: list[OutputTextPart] | None = None
    ) -> OutputMessage:
        content = [OutputTextPart(text=text)] if parts is None else parts
        item_id = f"msg_{self.context.request_id}_{len(self._items)}"
        return OutputMessage(id=item_id, status=status, content=content)

    def _call(self, call: ToolCallOut) -> OutputFunctionCall:
        return OutputFunctionCall(
            id="fc_" + call.id.removeprefix("call_"),
            call_id=call.id,
            name=call.function.name,
            arguments=call.function.arguments,
            status="completed",
        )

    def _at(self, **fields: Any) -> dict[str, Any]:
        return {"output_index": len(self._items), **fields}

    def _in_part(self, **fields: Any) -> dict[str, Any]:
        item_id = f"msg_{self.context.request_id}_{len(self._items)}"
        return {"item_id": item_id, "output_index": len(self._items), "content_index": 0, **fields}

    def _event(self, name: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": name, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return named_event(name, payload)

    def _response(self, end: Finished) -> Response:
        incomplete = end.reason is FinishReason.LENGTH
        usage = ResponseUsage(
            input_tokens=end.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=end.cached_tokens),
            output_tokens=end.completion_tokens,
            total_tokens=end.prompt_tokens + end.completion_tokens,
        )
        return msgspec.structs.replace(
            self._echo,
            status="incomplete" if incomplete else "completed",
            output=list(self._items),
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if incomplete
            else None,
            usage=usage,
        )

    async def _ensure_started(self, respond: Responder) -> None:
        if respond.started:
            return
        await respond.start(200, "text/event-stream", SSE_HEADERS)
        events = self._event("response.created", {"response": self._echo})
        events += self._event("response.in_progress", {"response": self._echo})
        await respond.chunk(events)
