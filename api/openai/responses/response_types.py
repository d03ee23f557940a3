"""OpenAI's Responses wire format (``/v1/responses``): requests and responses.

Stateless: this server keeps no responses, so ``store`` must be false or
absent and ``previous_response_id`` is refused; the whole conversation comes
in ``input``. Fields the server cannot honour are typed to accept only what
changes nothing and refused with a reason (:data:`NOT_HONOURED_RESPONSES`);
unknown fields are ignored, as on the other OpenAI routes.

``input`` items are decoded one by one (:func:`input_items`): OpenAI lets a
message item leave out its ``type``, which a tagged union cannot express.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from api.http.problems import HTTPProblem
from api.openai.request_types import (
    MAX_TOKENS_ACCEPTED,
    CacheSalt,
    FunctionName,
    Nothing,
    Priority,
    SchemaName,
)

MAX_INPUT_ITEMS = 4096


class InputText(Struct, frozen=True, kw_only=True, tag_field="type", tag="input_text"):
    """Text the user (or the system) wrote."""

    text: str


class InputTextPart(Struct, frozen=True, kw_only=True):
    """Text of a function's output (not tagged: a lone tagged Struct may leave its tag out)."""

    type: Literal["input_text"]
    text: str


class OutputText(Struct, frozen=True, kw_only=True, tag_field="type", tag="output_text"):
    """Text the model wrote in an earlier turn."""

    text: str
    annotations: list[Any] | None = None


class MessageItem(Struct, frozen=True, kw_only=True, tag_field="type", tag="message"):
    """A message of the conversation (``type`` may be left out)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | OutputText]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        """The message's text, parts joined."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class FunctionCallItem(Struct, frozen=True, kw_only=True, tag_field="type", tag="function_call"):
    """A function call the model made in an earlier turn."""

    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: FunctionName
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(
    Struct, frozen=True, kw_only=True, tag_field="type", tag="function_call_output"
):
    """What a function call returned."""

    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    output: str | list[InputTextPart]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        """The output's text, parts joined."""
        if isinstance(self.output, list):
            return "".join(part.text for part in self.output)
        return self.output


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
INPUT_ITEM_TYPES = (MessageItem, FunctionCallItem, FunctionCallOutputItem)


class FunctionTool(Struct, frozen=True, kw_only=True):
    """A function the model may call (Responses' flat shape)."""

    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(Struct, frozen=True, kw_only=True):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"]
    name: FunctionName


class PlainText(Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """``text.format: {"type": "text"}``: unconstrained (the default)."""


class JsonObjectText(Struct, frozen=True, kw_only=True, tag_field="type", tag="json_object"):
    """``text.format: {"type": "json_object"}``: one JSON object."""


class JsonSchemaText(Struct, frozen=True, kw_only=True, tag_field="type", tag="json_schema"):
    """``text.format: {"type": "json_schema", ...}``: JSON valid against ``schema``."""

    name: SchemaName
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


ResponsesTextFormat = PlainText | JsonObjectText | JsonSchemaText


class TextConfig(Struct, frozen=True, kw_only=True):
    """``text``: the output's format (``verbosity`` is a hint)."""

    format: ResponsesTextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/responses``."""

    model: str
    input: str | Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_ACCEPTED)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    tools: Annotated[list[FunctionTool], Meta(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    metadata: (
        Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)] | None
    ) = None
    store: Literal[False] | None = None
    previous_response_id: None = None
    conversation: None = None
    background: Literal[False] | None = None
    reasoning: None = None
    include: Nothing | None = None
    truncation: Literal["disabled"] | None = None
    top_logprobs: Literal[0] | None = None
    max_tool_calls: None = None
    prompt: None = None
    user: str | None = None
    cache_salt: CacheSalt | None = None
    priority: Priority | None = None


NOT_HONOURED_RESPONSES = {
    "store": "this server keeps no responses: send `store: false`",
    "previous_response_id": (
        "this server keeps no responses to continue: send the whole conversation in `input`"
    ),
    "conversation": "this server keeps no conversations: send the whole conversation in `input`",
    "background": "background responses are not supported",
    "reasoning": "this server's models do not reason: send no `reasoning`",
    "include": "no additional output data is available",
    "truncation": "this server never truncates the input: send `disabled`",
    "top_logprobs": "log-probabilities are offered on /v1/chat/completions",
    "max_tool_calls": "a limit on tool calls is not supported",
    "prompt": "stored prompts are not supported",
}
"""Fields that would change the answer and that this server cannot honour, and why."""


def input_items(raw: list[dict[str, Any]]) -> list[InputItem]:
    """``input``'s items, each decoded (a message may leave out its ``type``).

    422 naming the item if one does not fit.
    """
    items: list[InputItem] = []
    for index, item in enumerate(raw):
        try:
            items.append(msgspec.convert({"type": "message", **item}, InputItem))
        except msgspec.ValidationError as exc:
            where = f"`input[{index}]"
            message = str(exc).replace("`$.", where + ".").replace("`$`", where + "`")
            raise HTTPProblem(422, "invalid-field", message) from None
    return items


# -- responses ---------------------------------------------------------------------


class OutputTextPart(Struct, frozen=True, kw_only=True):
    """Text of an output message."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(Struct, frozen=True, kw_only=True, tag_field="type", tag="message"):
    """An output message."""

    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class OutputFunctionCall(Struct, frozen=True, kw_only=True, tag_field="type", tag="function_call"):
    """A function call the model made."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(Struct, frozen=True, kw_only=True):
    """Prompt tokens the prefix cache supplied."""

    cached_tokens: int


class OutputTokensDetails(Struct, frozen=True, kw_only=True):
    """This server's models do not reason: always 0."""

    reasoning_tokens: int = 0


class ResponseUsage(Struct, frozen=True, kw_only=True):
    """Token counts of a response."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(Struct, frozen=True, kw_only=True):
    """Why a response failed."""

    code: str
    message: str


class IncompleteDetails(Struct, frozen=True, kw_only=True):
    """Why a response is incomplete."""

    reason: Literal["max_output_tokens"]


class Response(Struct, frozen=True, kw_only=True):
    """The response object of ``/v1/responses``."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice = "auto"
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    text: TextConfig | None = None
    store: bool = False
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
