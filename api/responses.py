"""OpenAI responses for one request: a JSON body, or server-sent events.

A streamed response starts with its first token (or at the end), never
before: an error before any text is still answered with a proper status and
a problem body. After the stream has started, an error is sent as an event
carrying the request id, then ``[DONE]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from actors.generation.protocol import Finished, TokenLogprob
from api.http import Responder
from api.logprobs import TokenNames, chat_logprobs, completion_logprobs
from api.openai_types import (
    DONE_EVENT,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChunkChoice,
    Completion,
    CompletionLogprobs,
    Delta,
    SamplingFields,
    StreamError,
    StreamErrorDetail,
    TextChoice,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    encode_event,
)
from api.problems import Problem
from api.tool_calls import ToolCallScanner, split_tool_calls
from api.tools import ToolPlan

SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


@dataclass
class Reply:
    """The response of one completion request, in either shape."""

    request_id: str
    model: str
    streaming: bool
    include_usage: bool
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))
    tools: ToolPlan | None = None
    """Set when the answer may hold tool calls: they are parsed out of the text."""
    names: TokenNames | None = None
    """Set when the request asked for log-probabilities."""
    _scanner: ToolCallScanner | None = None
    _unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    _text_offset: int = 0

    def __post_init__(self) -> None:
        if self.tools is not None and self.tools.syntax is not None:
            self._scanner = ToolCallScanner(self.tools)

    @property
    def response_id(self) -> str:
        """The OpenAI-style id of this completion."""
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request_id

    async def send_delta(
        self, respond: Responder, text: str, logprobs: list[TokenLogprob] | None = None
    ) -> None:
        """Stream ``text`` (starting the event stream on the first call)."""
        calls: list[ToolCallOut] = []
        before = 0
        if self._scanner is not None:
            before = len(self._scanner.calls)
            text, calls = self._scanner.feed(text)
        self._unsent_logprobs.extend(logprobs or ())
        if not text and not calls:
            return  # held back: its log-probabilities go with what is sent next
        await self._ensure_started(respond)
        events = encode_event(self._chunk(text, None)) if text else b""
        for offset, call in enumerate(calls):
            events += encode_event(self._call_chunk(before + offset, call))
        await respond.chunk(events)

    async def send_end(
        self,
        respond: Responder,
        text: str,
        end: Finished,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        """Finish: the whole body, or the last events of the stream."""
        usage = Usage(
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
            total_tokens=end.prompt_tokens + end.completion_tokens,
        )
        reason = end.reason.value
        if not self.streaming:
            self._unsent_logprobs = list(logprobs or ())
            await respond.json(200, self._whole(text, reason, usage))
            return
        rest = "" if self._scanner is None else self._scanner.flush()
        if self._scanner is not None and self._scanner.calls and reason == "stop":
            reason = "tool_calls"
        await self._ensure_started(respond)
        events = encode_event(self._chunk(rest, None)) if rest or self._unsent_logprobs else b""
        events += encode_event(self._chunk("", reason))
        if self.include_usage:
            events += encode_event(self._usage_chunk(usage))
        await respond.chunk(events + DONE_EVENT, more=False)

    async def send_error(self, respond: Responder, problem: Problem) -> None:
        """End a started stream with an error event that names the request."""
        error = StreamError(
            error=StreamErrorDetail(
                message=problem.detail,
                type=problem.slug,
                code=problem.status,
                request_id=self.request_id,
            )
        )
        await respond.chunk(encode_event(error) + DONE_EVENT, more=False)

    async def _ensure_started(self, respond: Responder) -> None:
        if respond.started:
            return
        await respond.start(200, "text/event-stream", SSE_HEADERS)
        if self.chat:  # OpenAI's first chat chunk announces the role
            first = ChatCompletionChunk(
                id=self.response_id,
                created=self.created,
                model=self.model,
                choices=[ChunkChoice(delta=Delta(role="assistant", content=""))],
            )
            await respond.chunk(encode_event(first))

    def _chunk(self, text: str, reason: str | None) -> msgspec.Struct:
        if self.chat:
            delta = Delta(content=text) if text else Delta()
            choice = ChunkChoice(delta=delta, finish_reason=reason, logprobs=self._chat_logprobs())
            return ChatCompletionChunk(
                id=self.response_id, created=self.created, model=self.model, choices=[choice]
            )
        return Completion(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=[
                TextChoice(text=text, finish_reason=reason, logprobs=self._text_logprobs(text))
            ],
        )

    def _chat_logprobs(self) -> ChatLogprobs | None:
        """The log-probabilities not sent yet, in chat's shape (``None`` if not asked for)."""
        if self.names is None:
            return None
        entries, self._unsent_logprobs = self._unsent_logprobs, []
        return chat_logprobs(entries, self.names)

    def _text_logprobs(self, text: str) -> CompletionLogprobs | None:
        """The log-probabilities not sent yet, in the legacy shape, offsets running on."""
        if self.names is None:
            return None
        entries, self._unsent_logprobs = self._unsent_logprobs, []
        found = completion_logprobs(entries, self.names, self._text_offset)
        self._text_offset += len(text)
        return found

    def _call_chunk(self, index: int, call: ToolCallOut) -> msgspec.Struct:
        delta = Delta(tool_calls=[ToolCallDelta(index=index, id=call.id, function=call.function)])
        return ChatCompletionChunk(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta)],
        )

    def _usage_chunk(self, usage: Usage) -> msgspec.Struct:
        if self.chat:
            return ChatCompletionChunk(
                id=self.response_id, created=self.created, model=self.model, choices=[], usage=usage
            )
        return Completion(
            id=self.response_id, created=self.created, model=self.model, choices=[], usage=usage
        )

    def _whole(self, text: str, reason: str, usage: Usage) -> msgspec.Struct:
        if self.chat:
            message, reason = self._message(text, reason)
            return ChatCompletion(
                id=self.response_id,
                created=self.created,
                model=self.model,
                choices=[
                    ChatChoice(
                        message=message, finish_reason=reason, logprobs=self._chat_logprobs()
                    )
                ],
                usage=usage,
            )
        return Completion(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=[
                TextChoice(text=text, finish_reason=reason, logprobs=self._text_logprobs(text))
            ],
            usage=usage,
        )

    def _message(self, text: str, reason: str) -> tuple[AssistantMessage, str]:
        """The whole message, tool calls parsed out; ``tool_calls`` ends a turn that made some."""
        if self.tools is None or self.tools.syntax is None:
            return AssistantMessage(content=text), reason
        content, calls = split_tool_calls(self.tools, text)
        if not calls:
            return AssistantMessage(content=content), reason
        message = AssistantMessage(content=content or None, tool_calls=calls)
        return message, "tool_calls" if reason == "stop" else reason


def chat_reply(
    request_id: str,
    model: str,
    body: SamplingFields,
    tools: ToolPlan | None = None,
    names: TokenNames | None = None,
) -> Reply:
    """The reply shape of a chat completion (tool calls parsed out when ``tools`` says so).

    ``names``: given when the request asked for log-probabilities.
    """
    include = bool(body.stream_options and body.stream_options.include_usage)
    return Reply(request_id, model, body.stream, include, True, tools=tools, names=names)


def text_reply(
    request_id: str, model: str, body: SamplingFields, names: TokenNames | None = None
) -> Reply:
    """The reply shape of a text completion."""
    include = bool(body.stream_options and body.stream_options.include_usage)
    return Reply(request_id, model, body.stream, include, False, names=names)
