"""The OpenAI wire format, requests (the responses are in :mod:`api.openai.bodies`).

Unknown request fields are ignored, as OpenAI's clients expect (they only
hint: ``service_tier``, ``store``, ``metadata``, ...); wrong types and
out-of-range values are rejected with a message that names the field, and so
are known fields whose meaning the server cannot honour (:data:`NOT_HONOURED`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
MAX_TOKENS_ACCEPTED = 1_000_000
"""The most tokens a request may name when the server sets no lower limit."""
TokenCount = Annotated[int, Meta(ge=1, le=MAX_TOKENS_ACCEPTED)]
MAX_CHOICES = 16
"""The most choices (``n``) one request may ask for: they share the batch with everyone else."""


class StreamOptions(Struct, frozen=True, kw_only=True):
    """``stream_options``: only ``include_usage`` is honoured."""

    include_usage: bool = False


TokenId = Annotated[int, Meta(ge=0)]
"""A token id; the served document bounds it by the vocabulary."""
TokenIdKey = Annotated[str, Meta(pattern="^(0|[1-9][0-9]*)$")]
"""A token id written as a JSON object key (``logit_bias``)."""
Nothing = Annotated[list[Any], Meta(max_length=0)]
"""An empty list: what a field the server cannot honour yet may carry."""
Priority = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
"""``priority`` (vLLM's field): among one tenant's waiting requests, lower runs sooner."""
CacheSalt = Annotated[str, Meta(min_length=1, max_length=256)]
"""``cache_salt`` (vLLM's field): requests reuse each other's cached prompt prefixes
only when they carry the same salt (and come from the same tenant)."""


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
    logit_bias: dict[TokenIdKey, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    stop: (
        Annotated[str, Meta(max_length=256)] | Annotated[list[str], Meta(max_length=16)] | None
    ) = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    cache_salt: CacheSalt | None = None
    priority: Priority | None = None


class TextPart(Struct, frozen=True, kw_only=True):
    """One part of a message's content: this server's models read text only."""

    type: Literal["text"]
    text: str


class FunctionCall(Struct, frozen=True, kw_only=True):
    """The function an earlier assistant turn called, and its arguments (JSON text)."""

    name: str
    arguments: str


class ToolCall(Struct, frozen=True, kw_only=True):
    """One tool call of an earlier assistant turn."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _MessageParam(Struct, frozen=True, kw_only=True, tag_field="role"):
    """One message of a conversation; ``role`` picks the class."""

    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text, parts joined."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class SystemMessageParam(_MessageParam, frozen=True, kw_only=True, tag="system"):
    """Instructions for the model."""


class DeveloperMessageParam(_MessageParam, frozen=True, kw_only=True, tag="developer"):
    """OpenAI's newer name for the system prompt."""


class UserMessageParam(_MessageParam, frozen=True, kw_only=True, tag="user"):
    """What the user said."""


class AssistantMessageParam(_MessageParam, frozen=True, kw_only=True, tag="assistant"):
    """An earlier answer of the model, possibly calling tools."""

    tool_calls: list[ToolCall] | None = None


class ToolMessageParam(_MessageParam, frozen=True, kw_only=True, tag="tool"):
    """The result of an earlier tool call."""

    tool_call_id: str


ChatMessage = (
    SystemMessageParam
    | DeveloperMessageParam
    | UserMessageParam
    | AssistantMessageParam
    | ToolMessageParam
)
"""A message of the conversation, by role."""


class TextResponseFormat(Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """``response_format: {"type": "text"}``: unconstrained text (the default)."""


class JsonObjectFormat(Struct, frozen=True, kw_only=True, tag_field="type", tag="json_object"):
    """``response_format: {"type": "json_object"}``: the answer is one JSON object."""


SchemaName = Annotated[str, Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]


class JsonSchemaSpec(Struct, frozen=True, kw_only=True):
    """The schema the answer must be valid against, as OpenAI names it."""

    name: SchemaName
    description: str | None = None
    schema: dict[str, Any] | None = None
    """A JSON Schema; absent means any JSON value."""
    strict: bool | None = None
    """Accepted either way: this server always enforces the schema (by constrained
    decoding), which is what ``strict: true`` asks of OpenAI."""


class JsonSchemaFormat(Struct, frozen=True, kw_only=True, tag_field="type", tag="json_schema"):
    """``response_format: {"type": "json_schema", ...}``: the answer is valid against a schema."""

    json_schema: JsonSchemaSpec


ResponseFormat = TextResponseFormat | JsonObjectFormat | JsonSchemaFormat


FunctionName = Annotated[str, Meta(pattern="^[a-zA-Z0-9_.-]{1,64}$")]


class FunctionDefinition(Struct, frozen=True, kw_only=True):
    """A function the model may call; ``parameters`` is a JSON Schema of its arguments."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    """Accepted either way: forced calls always follow ``parameters`` (constrained decoding)."""


class ToolDefinition(Struct, frozen=True, kw_only=True):
    """One tool of ``tools``: a function."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionChoice(Struct, frozen=True, kw_only=True):
    """The function ``tool_choice`` names."""

    name: FunctionName


class NamedToolChoice(Struct, frozen=True, kw_only=True):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"]
    function: FunctionChoice


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields, frozen=True, kw_only=True):
    """``POST /v1/chat/completions``.

    The fields after ``messages`` are typed as narrowly as the server can
    honour them today are refused (see :data:`NOT_HONOURED`), never accepted
    and ignored; ``response_format`` and forced tool calls are
    enforced by constrained decoding (:mod:`api.serving.structured`, :mod:`api.serving.tools.plan`).
    """

    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=4096)]
    tools: Annotated[list[ToolDefinition], Meta(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Nothing | None = None
    function_call: Literal["none", "auto"] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    modalities: list[Literal["text"]] | None = None
    audio: None = None
    web_search_options: None = None


class CompletionRequest(SamplingFields, frozen=True, kw_only=True):
    """``POST /v1/completions``: a prompt as text, one-element list, or token ids."""

    # msgspec allows one array type per union; the handler checks the list's shape.
    prompt: str | Annotated[list[str | TokenId], Meta(min_length=1)]
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: Literal[False] | None = None
    best_of: Annotated[int, Meta(ge=1, le=1)] | None = None
    suffix: Annotated[str, Meta(max_length=0)] | None = None


NOT_HONOURED = {
    "functions": "function calling is not supported yet: send no functions",
    "function_call": "function calling is not supported yet: only `none` or `auto`",
    "modalities": "this server generates text only",
    "audio": "this server generates text only",
    "web_search_options": "this server cannot search the web",
    "echo": "echoing the prompt is not supported",
    "best_of": "best_of above 1 is not supported",
    "suffix": "a suffix (fill-in-the-middle) is not supported",
}
"""Fields that would change the answer and that the server cannot honour yet, and why.

They are typed to accept only the values that change nothing, so the OpenAPI
document says what is accepted; a request carrying any other value is
answered 422 with this reason instead of being answered as if it had not.
"""
