"""The OpenAI wire format, responses: bodies, stream chunks and stream errors.

The requests they answer are in :mod:`api.openai.request_types`.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct


class PromptTokensDetails(Struct, frozen=True, kw_only=True):
    """What the prompt's tokens were: ``cached_tokens`` came from the prefix cache."""

    cached_tokens: int


class Usage(Struct, frozen=True, kw_only=True):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CalledFunction(Struct, frozen=True, kw_only=True):
    """The function a tool call calls, and its arguments as JSON text."""

    name: str
    arguments: str


class ToolCallOut(Struct, frozen=True, kw_only=True):
    """One tool call the model made."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ToolCallDelta(Struct, frozen=True, kw_only=True):
    """A whole tool call in one streamed chunk (name and arguments together)."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class AssistantMessage(Struct, frozen=True, kw_only=True):
    """The generated message: text, tool calls, or both."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(Struct, frozen=True, kw_only=True):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(Struct, frozen=True, kw_only=True):
    """A generated token's log-probability, with the most likely tokens at its place."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct, frozen=True, kw_only=True):
    """``choices[].logprobs`` of a chat completion (or of one of its chunks)."""

    content: list[ChatTokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(Struct, frozen=True, kw_only=True):
    """``choices[].logprobs`` of a text completion, in the legacy shape."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(Struct, frozen=True, kw_only=True):
    """The one choice of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(Struct, frozen=True, kw_only=True):
    """A complete chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one chunk adds to the message."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(Struct, frozen=True, kw_only=True):
    """The one choice of a chat completion chunk."""

    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(Struct, frozen=True, kw_only=True):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextChoice(Struct, frozen=True, kw_only=True):
    """The one choice of a text completion (or of one of its chunks)."""

    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct, frozen=True, kw_only=True):
    """A text completion, complete or one streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class StreamErrorDetail(Struct, frozen=True, kw_only=True):
    """What went wrong with a stream that had started (the problem, in OpenAI's shape)."""

    message: str
    type: str
    """The problem's slug (``deadline-exceeded``, ``engine-restarted``, ...)."""
    code: int
    """The HTTP status the problem would have had before the stream started."""
    request_id: str


class StreamError(Struct, frozen=True, kw_only=True):
    """The last event before ``[DONE]`` of a stream that failed after it started."""

    error: StreamErrorDetail


class ModelCard(Struct, frozen=True, kw_only=True):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-troupe"


class ModelList(Struct, frozen=True, kw_only=True):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def encode_event(payload: object) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
