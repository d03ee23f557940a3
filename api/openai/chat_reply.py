"""OpenAI chat and text completion replies: a JSON body, or server-sent events.

A streamed response starts with its first token (or at the end), never
before: an error before any text is still answered with a proper status and
a problem body. After the stream has started, an error is sent as an event
carrying the request id, then ``[DONE]``.

A request with ``n`` choices has one :class:`ChoiceReply` per choice: each
holds what its own text still owes (tool calls being parsed, log-probabilities
not yet sent), and its chunks carry its index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec

from actors.generation.protocol import Finished, TokenLogprob
from api.http.asgi import Responder
from api.http.problems import Problem
from api.openai.bodies import (
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
    PromptTokensDetails,
    StreamError,
    StreamErrorDetail,
    TextChoice,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    encode_event,
)
from api.openai.logprobs import chat_logprobs, completion_logprobs
from api.openai.request_types import SamplingFields
from api.serving.token_names import TokenNames
from api.serving.tools.plan import ToolPlan
from api.serving.tools.scanner import ToolCallScanner, split_tool_calls
from api.serving.writers import SSE_HEADERS, ChoiceResult, ReplyContext


def usage_of(end: Finished) -> Usage:
    """OpenAI's usage figures of a finished request (the prompt counted once)."""
    return Usage(
        prompt_tokens=end.prompt_tokens,
        completion_tokens=end.completion_tokens,
        total_tokens=end.prompt_tokens + end.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=end.cached_tokens),
    )


@dataclass
class ChoiceReply:
    """What one choice's text still owes the response."""

    index: int
    tools: ToolPlan | None
    names: TokenNames | None
    scanner: ToolCallScanner | None = None
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    text_offset: int = 0

    def __post_init__(self) -> None:
        if self.tools is not None and self.tools.syntax is not None:
            self.scanner = ToolCallScanner(self.tools)

    def chat_logprobs(self) -> ChatLogprobs | None:
        """The log-probabilities not sent yet, in chat's shape (``None`` if not asked for)."""
        if self.names is None:
            return None
        entries, self.unsent_logprobs = self.unsent_logprobs, []
        return chat_logprobs(entries, self.names)

    def text_logprobs(self, text: str) -> CompletionLogprobs | None:
        """The log-probabilities not sent yet, in the legacy shape, offsets running on."""
        if self.names is None:
            return None
        entries, self.unsent_logprobs = self.unsent_logprobs, []
        found = completion_logprobs(entries, self.names, self.text_offset)
        self.text_offset += len(text)
        return found

    def message(self, text: str, reason: str) -> tuple[AssistantMessage, str]:
        """The whole message, tool calls parsed out; ``tool_calls`` ends a turn that made some."""
        if self.tools is None or self.tools.syntax is None:
            return AssistantMessage(content=text), reason
        content, calls = split_tool_calls(self.tools, text)
        if not calls:
            return AssistantMessage(content=content), reason
        message = AssistantMessage(content=content or None, tool_calls=calls)
        return message, "tool_calls" if reason == "stop" else reason


@dataclass
class CompletionReply:
    """What the responses of chat and text completions share: the stream and its choices.

    :class:`ChatReply` and :class:`TextReply` write their own chunks and bodies.
    """

    request_id: str
    model: str
    streaming: bool
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))
    tools: ToolPlan | None = None
    """Set when the answer may hold tool calls: they are parsed out of the text."""
    names: TokenNames | None = None
    """Set when the request asked for log-probabilities."""
    n: int = 1
    choices: list[ChoiceReply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.choices = [ChoiceReply(i, self.tools, self.names) for i in range(self.n)]

    ID_PREFIX: ClassVar[str] = ""

    @property
    def response_id(self) -> str:
        """The OpenAI-style id of this completion."""
        return self.ID_PREFIX + self.request_id

    async def send_delta(
        self,
        respond: Responder,
        text: str,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
    ) -> None:
        """Stream ``text`` of choice ``index`` (starting the event stream on the first call)."""
        choice = self.choices[index]
        calls: list[ToolCallOut] = []
        before = 0
        if choice.scanner is not None:
            before = len(choice.scanner.calls)
            text, calls = choice.scanner.feed(text)
        choice.unsent_logprobs.extend(logprobs or ())
        if not text and not calls:
            return  # held back: its log-probabilities go with what is sent next
        await self._ensure_started(respond)
        events = encode_event(self._chunk(choice, text, None)) if text else b""
        for offset, call in enumerate(calls):
            events += encode_event(self._call_chunk(choice, before + offset, call))
        await respond.chunk(events)

    async def send_choice_end(self, respond: Responder, end: Finished, index: int = 0) -> None:
        """A streamed choice's last events: what its text held back, then its finish reason."""
        reason = end.reason.value
        choice = self.choices[index]
        rest, calls, before = "", list[ToolCallOut](), 0
        if choice.scanner is not None:
            before = len(choice.scanner.calls)
            rest, calls = choice.scanner.flush()
            if choice.scanner.calls and reason == "stop":
                reason = "tool_calls"
        await self._ensure_started(respond)
        events = b""
        if rest or (choice.unsent_logprobs and not calls):
            events += encode_event(self._chunk(choice, rest, None))
        for offset, call in enumerate(calls):
            events += encode_event(self._call_chunk(choice, before + offset, call))
        events += encode_event(self._chunk(choice, "", reason))
        await respond.chunk(events)

    async def send_done(self, respond: Responder, end: Finished) -> None:
        """End a stream whose choices have all ended: the usage (if asked for), then ``[DONE]``."""
        await self._ensure_started(respond)
        events = encode_event(self._usage_chunk(usage_of(end))) if self.include_usage else b""
        await respond.chunk(events + DONE_EVENT, more=False)

    async def send_whole(
        self, respond: Responder, results: list[ChoiceResult], end: Finished
    ) -> None:
        """The whole response body, every choice in it."""
        await respond.json(200, self._whole(results, usage_of(end)))

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
        first = self._first_chunk()
        if first is not None:
            await respond.chunk(encode_event(first))

    def _first_chunk(self) -> msgspec.Struct | None:
        """What a stream starts with, before any text (``None``: nothing)."""
        return None

    def _chunk(self, choice: ChoiceReply, text: str, reason: str | None) -> msgspec.Struct:
        raise NotImplementedError

    def _call_chunk(
        self, choice: ChoiceReply, call_index: int, call: ToolCallOut
    ) -> msgspec.Struct:
        raise NotImplementedError  # only chat answers carry tool calls

    def _usage_chunk(self, usage: Usage) -> msgspec.Struct:
        raise NotImplementedError

    def _whole(self, results: list[ChoiceResult], usage: Usage) -> msgspec.Struct:
        raise NotImplementedError


@dataclass
class ChatReply(CompletionReply):
    """A chat completion's response: ``chat.completion`` or its ``chat.completion.chunk`` stream."""

    ID_PREFIX: ClassVar[str] = "chatcmpl-"

    def _first_chunk(self) -> msgspec.Struct:
        # OpenAI's first chat chunk of each choice announces the role.
        return ChatCompletionChunk(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=[
                ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
                for i in range(self.n)
            ],
        )

    def _chunk(self, choice: ChoiceReply, text: str, reason: str | None) -> msgspec.Struct:
        delta = Delta(content=text) if text else Delta()
        chunk = ChunkChoice(
            index=choice.index,
            delta=delta,
            finish_reason=reason,
            logprobs=choice.chat_logprobs(),
        )
        return ChatCompletionChunk(
            id=self.response_id, created=self.created, model=self.model, choices=[chunk]
        )

    def _call_chunk(
        self, choice: ChoiceReply, call_index: int, call: ToolCallOut
    ) -> msgspec.Struct:
        delta = Delta(
            tool_calls=[ToolCallDelta(index=call_index, id=call.id, function=call.function)]
        )
        chunk = ChunkChoice(index=choice.index, delta=delta, logprobs=choice.chat_logprobs())
        return ChatCompletionChunk(
            id=self.response_id, created=self.created, model=self.model, choices=[chunk]
        )

    def _usage_chunk(self, usage: Usage) -> msgspec.Struct:
        return ChatCompletionChunk(
            id=self.response_id, created=self.created, model=self.model, choices=[], usage=usage
        )

    def _whole(self, results: list[ChoiceResult], usage: Usage) -> msgspec.Struct:
        chat_choices = []
        for choice, result in zip(self.choices, results, strict=True):
            choice.unsent_logprobs = list(result.logprobs)
            message, reason = choice.message(result.text, result.reason)
            chat_choices.append(
                ChatChoice(
                    index=choice.index,
                    message=message,
                    finish_reason=reason,
                    logprobs=choice.chat_logprobs(),
                )
            )
        return ChatCompletion(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=chat_choices,
            usage=usage,
        )


@dataclass
class TextReply(CompletionReply):
    """A text completion's response: ``text_completion`` or its stream of the same objects."""

    ID_PREFIX: ClassVar[str] = "cmpl-"

    def _chunk(self, choice: ChoiceReply, text: str, reason: str | None) -> msgspec.Struct:
        text_choice = TextChoice(
            index=choice.index, text=text, finish_reason=reason, logprobs=choice.text_logprobs(text)
        )
        return Completion(
            id=self.response_id, created=self.created, model=self.model, choices=[text_choice]
        )

    def _usage_chunk(self, usage: Usage) -> msgspec.Struct:
        return Completion(
            id=self.response_id, created=self.created, model=self.model, choices=[], usage=usage
        )

    def _whole(self, results: list[ChoiceResult], usage: Usage) -> msgspec.Struct:
        text_choices = []
        for choice, result in zip(self.choices, results, strict=True):
            choice.unsent_logprobs = list(result.logprobs)
            text_choices.append(
                TextChoice(
                    index=choice.index,
                    text=result.text,
                    finish_reason=result.reason,
                    logprobs=choice.text_logprobs(result.text),
                )
            )
        return Completion(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=text_choices,
            usage=usage,
        )


def chat_reply(
    context: ReplyContext, body: SamplingFields, tools: ToolPlan | None = None
) -> ChatReply:
    """The reply of a chat completion (tool calls parsed out when ``tools`` says so)."""
    include = bool(body.stream_options and body.stream_options.include_usage)
    return ChatReply(
        context.request_id,
        context.model,
        body.stream,
        include,
        created=context.created,
        tools=tools,
        names=context.names,
        n=body.n,
    )


def text_reply(context: ReplyContext, body: SamplingFields) -> TextReply:
    """The reply of a text completion."""
    include = bool(body.stream_options and body.stream_options.include_usage)
    return TextReply(
        context.request_id,
        context.model,
        body.stream,
        include,
        created=context.created,
        names=context.names,
        n=body.n,
    )
