"""The OpenAI wire format: request bodies (validated by msgspec) and responses.

Unknown request fields are ignored, as OpenAI's clients expect; wrong types
and out-of-range values are rejected with a message that names the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Meta(ge=1, le=1_000_000)]


class StreamOptions(Struct, frozen=True, kw_only=True):
    """``stream_options``: only ``include_usage`` is honoured."""

    include_usage: bool = False


class SamplingFields(Struct, frozen=True, kw_only=True):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    min_p: Probability | None = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    stop: (
        Annotated[str, Meta(max_length=256)] | Annotated[list[str], Meta(max_length=16)] | None
    ) = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ContentPart(Struct, frozen=True, kw_only=True):
    """One part of a message's content; text parts are used, others ignored."""

    type: str
    text: str | None = None


class ChatMessage(Struct, frozen=True, kw_only=True):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        """The message's text, parts joined."""
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatCompletionRequest(SamplingFields, frozen=True, kw_only=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=4096)]


class CompletionRequest(SamplingFields, frozen=True, kw_only=True):
    """``POST /v1/completions``: a prompt as text, one-element list, or token ids."""

    # msgspec allows one array type per union; the handler checks the list's shape.
    prompt: str | Annotated[list[str | int], Meta(min_length=1)]


# -- responses -------------------------------------------------------------------


class Usage(Struct, frozen=True, kw_only=True):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Struct, frozen=True, kw_only=True):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Struct, frozen=True, kw_only=True):
    """The one choice of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


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


class ChunkChoice(Struct, frozen=True, kw_only=True):
    """The one choice of a chat completion chunk."""

    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


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
    logprobs: None = None


class Completion(Struct, frozen=True, kw_only=True):
    """A text completion, complete or one streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


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
