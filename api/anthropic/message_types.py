"""Anthropic's Messages wire format (``/v1/messages``): requests, responses, errors.

Requests decode into these Structs; fields the server cannot honour are typed
to accept only what changes nothing and refused with a reason
(:data:`NOT_HONOURED_MESSAGES`), as on the OpenAI routes. ``cache_control``
is accepted on every block: this server caches prompt prefixes by itself, so
asking for it changes nothing. Unknown fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Raw, Struct

from api.http.problems import Problem, ProblemShape, ProblemShapes
from api.openai.request_types import MAX_TOKENS_ACCEPTED, CacheSalt, Nothing, Priority

ToolName = Annotated[str, Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]


class CacheControl(Struct, frozen=True, kw_only=True):
    """A prompt-caching breakpoint: honoured by the automatic prefix cache."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class PlainTextBlock(Struct, frozen=True, kw_only=True):
    """A text block where only text may stand (the system prompt, a tool result).

    Not tagged: msgspec would let a lone tagged Struct leave its tag out.
    """

    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class TextBlock(Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """Text in a message or the system prompt."""

    text: str
    cache_control: CacheControl | None = None


class ToolUseBlock(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_use"):
    """A tool call the assistant made in an earlier turn."""

    id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: ToolName
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_result"):
    """What a tool returned, answering an earlier ``tool_use``."""

    tool_use_id: Annotated[str, Meta(min_length=1, max_length=256)]
    content: str | list[PlainTextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    @property
    def text(self) -> str:
        """The result's text, blocks joined."""
        if isinstance(self.content, list):
            return "".join(block.text for block in self.content)
        return self.content or ""


ContentBlock = TextBlock | ToolUseBlock | ToolResultBlock


class InputMessage(Struct, frozen=True, kw_only=True):
    """One turn of the conversation."""

    role: Literal["user", "assistant"]
    # Bounded by the body's size, as chat's message parts are.
    content: str | list[ContentBlock]


class Tool(Struct, frozen=True, kw_only=True):
    """A client tool the model may call; ``input_schema`` is a JSON Schema of its input."""

    name: ToolName
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoiceAuto(Struct, frozen=True, kw_only=True, tag_field="type", tag="auto"):
    """The model decides whether to call tools."""

    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Struct, frozen=True, kw_only=True, tag_field="type", tag="any"):
    """The model must call one of the tools."""

    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool"):
    """The model must call the named tool."""

    name: ToolName
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Struct, frozen=True, kw_only=True, tag_field="type", tag="none"):
    """The model must not call tools."""


MessagesToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class Metadata(Struct, frozen=True, kw_only=True):
    """``metadata``: an opaque id of the end user (never logged)."""

    user_id: Annotated[str, Meta(max_length=256)] | None = None


class ThinkingOff(Struct, frozen=True, kw_only=True):
    """``thinking``: ``disabled``, or ``adaptive`` (the model decides, and this one never thinks).

    ``enabled`` asks for thinking tokens this server's models do not produce: refused.
    """

    type: Literal["disabled", "adaptive"]


class JsonOutputFormat(Struct, frozen=True, kw_only=True):
    """``output_config.format``: the answer is JSON valid against ``schema``."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Struct, frozen=True, kw_only=True):
    """``output_config``: a structured output format (enforced by constrained decoding).

    ``effort`` tells a thinking model how much to think; this server's models
    do not think, so every level is honoured as it stands.
    """

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class MessagesRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/messages``."""

    model: str
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_ACCEPTED)]
    messages: Annotated[list[InputMessage], Meta(min_length=1, max_length=4096)]
    system: str | Annotated[list[PlainTextBlock], Meta(max_length=256)] | None = None
    stop_sequences: (
        Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=16)] | None
    ) = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    metadata: Metadata | None = None
    tools: Annotated[list[Tool], Meta(max_length=128)] | None = None
    tool_choice: MessagesToolChoice | None = None
    thinking: ThinkingOff | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    mcp_servers: Nothing | None = None
    container: None = None
    cache_salt: CacheSalt | None = None
    """An extension (vLLM's field): prompt prefixes are reused only between requests
    of one tenant that carry the same salt."""
    priority: Priority | None = None
    """An extension (vLLM's field): among one tenant's waiting requests, lower runs sooner."""


class CountTokensRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/messages/count_tokens``: what a request's prompt would cost."""

    model: str
    messages: Annotated[list[InputMessage], Meta(min_length=1, max_length=4096)]
    system: str | Annotated[list[PlainTextBlock], Meta(max_length=256)] | None = None
    tools: Annotated[list[Tool], Meta(max_length=128)] | None = None
    tool_choice: MessagesToolChoice | None = None
    thinking: ThinkingOff | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    mcp_servers: Nothing | None = None


NOT_HONOURED_MESSAGES = {
    "thinking": "this server's models do not think: send none, `disabled` or `adaptive`",
    "mcp_servers": "this server connects to no MCP servers",
    "container": "this server runs no code containers",
}
"""Fields that would change the answer and that this server cannot honour, and why."""


class InputTokenCount(Struct, frozen=True, kw_only=True):
    """The answer of ``count_tokens``."""

    input_tokens: int


class MessagesUsage(Struct, frozen=True, kw_only=True):
    """Token counts of a message; cached prompt tokens are the prefix cache's hits."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TextOut(Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """Text the model wrote."""

    text: str


class ToolUseOut(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_use"):
    """A tool call the model made."""

    id: str
    name: str
    input: Annotated[Raw, Meta(extra_json_schema={"type": "object"})]
    """The arguments' JSON object as the model wrote it (numbers never rewritten)."""


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageResponse(Struct, frozen=True, kw_only=True):
    """The response of ``/v1/messages``."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessagesUsage


class ErrorDetail(Struct, frozen=True, kw_only=True):
    """What went wrong, in Anthropic's words."""

    type: str
    message: str


class ErrorBody(Struct, frozen=True, kw_only=True):
    """Anthropic's error shape, with this server's request id."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
"""Anthropic's error type by status; other 4xx are invalid requests, other 5xx api errors."""


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


ANTHROPIC_PREFIX = "/v1/messages"
"""Routes under this path answer errors in Anthropic's shape."""


def error_body(status: int, detail: str, request_id: str) -> ErrorBody:
    """The Anthropic-shaped body of an error answered with ``status``."""
    return ErrorBody(
        error=ErrorDetail(type=error_type(status), message=detail), request_id=request_id
    )


def problem_body(problem: Problem, request_id: str) -> ErrorBody:
    """A problem in Anthropic's shape (a :data:`~api.http.problems.ProblemShape`)."""
    return error_body(problem.status, problem.detail, request_id)


PROBLEM_SHAPES = ProblemShapes(
    ((ANTHROPIC_PREFIX, ProblemShape(problem_body, {422: 400, 415: 400})),)
)
"""Anthropic's API answers an invalid body with 400 ``invalid_request_error`` (its SDK
raises ``BadRequestError`` for it, another class than for 422), so its routes do too."""
"""Errors on Anthropic's routes in Anthropic's shape, wherever they are answered."""
