"""``POST /v1/responses``: OpenAI's Responses API, stateless.

A Responses body becomes the chat completion it means: ``instructions`` the
system prompt, ``input`` the turns (consecutive function calls one assistant
turn, each output a tool turn), function tools and ``tool_choice`` as for
chat, ``text.format`` as ``response_format``. It is then admitted,
templated, constrained, generated, cancelled and reported exactly as a chat
completion; only its reply is written as Responses (:mod:`api.openai.responses.response_reply`).
"""

from __future__ import annotations

from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from api.openai.request_types import (
    AssistantMessageParam,
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionChoice,
    FunctionDefinition,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    ResponseFormat,
    SystemMessageParam,
    TextResponseFormat,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    ToolMessageParam,
    UserMessageParam,
)
from api.openai.responses.response_reply import ResponsesReply
from api.openai.responses.response_types import (
    NOT_HONOURED_RESPONSES,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputItem,
    JsonObjectText,
    JsonSchemaText,
    MessageItem,
    PlainText,
    Response,
    ResponsesRequest,
    input_items,
)
from api.serving.jobs import Job
from api.serving.pipeline import Pipeline


class Responses:
    """The handler of ``/v1/responses``, over the serving pipeline."""

    def __init__(self, core: Pipeline) -> None:
        self._core = core

    async def create(self, request: Request, respond: Responder) -> None:
        """``POST /v1/responses``."""
        await self._core.handle(request, respond, "responses", self._job)

    async def _job(self, request: Request) -> Job:
        core = self._core
        body = await request.json_body(
            ResponsesRequest, core.limits.max_body_bytes, NOT_HONOURED_RESPONSES
        )
        await core.check_model(body.model)
        limit = core.limits.max_tokens_limit
        if limit is not None and (body.max_output_tokens or 0) > limit:
            raise HTTPProblem(
                422, "invalid-field", f"`max_output_tokens` is above this server's limit of {limit}"
            )
        echo = _echo(body)
        return await core.chat_job_of(
            chat_request(body),
            lambda context, tools: ResponsesReply(context, body.stream, tools, echo),
        )


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat completion a Responses body means."""
    messages: list[ChatMessage] = []
    if body.instructions:
        messages.append(SystemMessageParam(content=body.instructions))
    if isinstance(body.input, str):
        messages.append(UserMessageParam(content=body.input))
    else:
        messages.extend(_turns(input_items(body.input)))
    tools = [
        ToolDefinition(
            type="function",
            function=FunctionDefinition(
                name=tool.name,
                description=tool.description,
                parameters=tool.parameters,
                strict=tool.strict,
            ),
        )
        for tool in body.tools or ()
    ]
    return ChatCompletionRequest(
        model=body.model,
        messages=messages,
        tools=tools or None,
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_response_format(body),
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stream=body.stream,
        cache_salt=body.cache_salt,
        priority=body.priority,
    )


def _turns(items: list[InputItem]) -> list[ChatMessage]:
    turns: list[ChatMessage] = []
    for item in items:
        match item:
            case MessageItem(role="user"):
                turns.append(UserMessageParam(content=item.text))
            case MessageItem(role="assistant"):
                turns.append(AssistantMessageParam(content=item.text))
            case MessageItem():
                turns.append(SystemMessageParam(content=item.text))
            case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
                call = ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
                turns.append(_with_call(turns, call))
            case FunctionCallOutputItem(call_id=call_id):
                turns.append(ToolMessageParam(content=item.text, tool_call_id=call_id))
    return turns


def _with_call(turns: list[ChatMessage], call: ToolCall) -> AssistantMessageParam:
    """An assistant turn making ``call``: the last turn's, if it is an assistant's (taken out)."""
    last = turns[-1] if turns else None
    if isinstance(last, AssistantMessageParam):
        turns.pop()
        return AssistantMessageParam(
            content=last.content, tool_calls=[*(last.tool_calls or ()), call]
        )
    return AssistantMessageParam(content="", tool_calls=[call])


def _tool_choice(choice: str | FunctionToolChoice | None) -> ToolChoice | None:
    if isinstance(choice, FunctionToolChoice):
        return NamedToolChoice(type="function", function=FunctionChoice(name=choice.name))
    if choice in ("none", "auto", "required"):
        return choice  # type: ignore[return-value]
    return None


def _response_format(body: ResponsesRequest) -> ResponseFormat | None:
    match body.text.format if body.text is not None else None:
        case PlainText():
            return TextResponseFormat()
        case JsonObjectText():
            return JsonObjectFormat()
        case JsonSchemaText(name=name, schema=schema, description=description, strict=strict):
            spec = JsonSchemaSpec(name=name, schema=schema, description=description, strict=strict)
            return JsonSchemaFormat(json_schema=spec)
    return None


def _echo(body: ResponsesRequest) -> Response:
    """The response's fields that repeat the request's settings (id and times set later)."""
    return Response(
        id="",
        created_at=0,
        status="in_progress",
        model=body.model,
        output=[],
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=dict(body.metadata or {}),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=body.temperature,
        top_p=body.top_p,
        tool_choice=body.tool_choice or "auto",
        tools=list(body.tools or ()),
        text=body.text,
    )
