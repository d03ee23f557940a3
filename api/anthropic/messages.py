"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API.

A Messages body becomes the chat completion it means (system prompt, turns,
tools, sampling), so it is admitted, templated, constrained, generated,
cancelled and reported exactly as a chat completion is; only its reply is
written in Anthropic's shape (:mod:`api.anthropic.message_reply`). Content blocks map
onto chat turns the way chat templates expect them: ``tool_use`` blocks
become the assistant turn's tool calls, and each ``tool_result`` becomes a
tool turn answering its call.
"""

from __future__ import annotations

import json

import anyio

from actors.generation.protocol import Finished, FinishReason
from api.anthropic.message_reply import AnthropicReply
from api.anthropic.message_types import (
    NOT_HONOURED_MESSAGES,
    ContentBlock,
    CountTokensRequest,
    InputMessage,
    InputTokenCount,
    MessagesRequest,
    MessagesToolChoice,
    PlainTextBlock,
    TextBlock,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from api.openai.request_types import (
    AssistantMessageParam,
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionChoice,
    FunctionDefinition,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    SystemMessageParam,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    ToolMessageParam,
    UserMessageParam,
)
from api.serving.jobs import Job
from api.serving.outcome import Cancellation
from api.serving.pipeline import Pipeline
from api.serving.tools.plan import ToolPlan
from api.serving.writers import ReplyContext, ReplyWriter, deadline_passed


class AnthropicMessages:
    """The handlers of Anthropic's routes, over the serving pipeline."""

    def __init__(self, core: Pipeline) -> None:
        self._core = core

    async def create(self, request: Request, respond: Responder) -> None:
        """``POST /v1/messages``."""
        await self._core.handle(request, respond, "messages", self._job)

    async def count_tokens(self, request: Request, respond: Responder) -> None:
        """``POST /v1/messages/count_tokens``: the prompt's length, nothing generated.

        Nothing is generated, so intake is not asked; the prompt is still built
        under the Messages deadline, on the tokenizing threads.
        """
        core = self._core
        async with core.reporting(request, "count_tokens") as outcome:
            with anyio.move_on_after(core.limits.timeouts["messages"]) as scope:
                body = await request.json_body(
                    CountTokensRequest, core.limits.max_body_bytes, NOT_HONOURED_MESSAGES
                )
                outcome.model = (await core.check_model(body.model)).name
                continues = _continues(body.messages)
                job = await core.chat_job_of(_chat_request(body, body.model), _no_reply, continues)
                prompt = await core.tokenized(job.make_prompt)
                outcome.prompt_tokens = len(prompt)
                outcome.end = Finished(
                    request_id=request.request_id,
                    reason=FinishReason.STOP,
                    prompt_tokens=len(prompt),
                    completion_tokens=0,
                )
                await respond.json(200, InputTokenCount(input_tokens=len(prompt)))
            if scope.cancelled_caught:
                outcome.cancelled_by = Cancellation.DEADLINE
                await deadline_passed(respond, None)

    async def _job(self, request: Request) -> Job:
        core = self._core
        body = await request.json_body(
            MessagesRequest, core.limits.max_body_bytes, NOT_HONOURED_MESSAGES
        )
        await core.check_model(body.model)
        continues = _continues(body.messages)
        return await core.chat_job_of(
            _chat_request(body, body.model),
            lambda context, tools: AnthropicReply(context, body.stream, tools),
            continues,
        )


def _no_reply(context: ReplyContext, tools: ToolPlan | None) -> ReplyWriter:
    """``count_tokens`` builds the prompt only: nothing is ever answered through a writer."""
    raise AssertionError("count_tokens writes no reply")


def _continues(messages: list[InputMessage]) -> bool:
    """Whether the last turn is an assistant prefill the answer continues (as Anthropic's do).

    An empty one is no prefill: :func:`_chat_request` leaves it out. One that
    calls tools cannot be continued: its results must come first.
    """
    last = messages[-1]
    if last.role != "assistant":
        return False
    if isinstance(last.content, list) and any(
        not isinstance(block, TextBlock) for block in last.content
    ):
        raise HTTPProblem(
            400, "invalid-turn", "a final assistant turn with `tool_use` needs its `tool_result`"
        )
    return bool(_text_of(last))


def _text_of(message: InputMessage) -> str:
    """A turn's text; only for turns of text blocks (or a string)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def _chat_request(body: MessagesRequest | CountTokensRequest, model: str) -> ChatCompletionRequest:
    """The chat completion a Messages body means."""
    messages: list[ChatMessage] = []
    system = _system_text(body.system)
    if system:
        messages.append(SystemMessageParam(content=system))
    turns = list(body.messages)
    last = turns[-1]
    empty = not _text_of(last) and (
        isinstance(last.content, str) or all(isinstance(block, TextBlock) for block in last.content)
    )
    if last.role == "assistant" and empty and len(turns) > 1:
        turns.pop()  # an empty prefill: the answer starts a new turn as usual
    for message in turns:
        messages.extend(_turns(message))
    tool_choice, parallel = _tool_choice(body.tool_choice)
    tools = [
        ToolDefinition(
            type="function",
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            ),
        )
        for tool in body.tools or ()
    ]
    output = body.output_config.format if body.output_config is not None else None
    response_format = (
        None
        if output is None
        else JsonSchemaFormat(json_schema=JsonSchemaSpec(name="output", schema=output.schema))
    )
    if not isinstance(body, MessagesRequest):
        return ChatCompletionRequest(
            model=model,
            messages=messages,
            tools=tools or None,
            tool_choice=tool_choice,
            response_format=response_format,
        )
    return ChatCompletionRequest(
        model=model,
        messages=messages,
        tools=tools or None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=response_format,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=list(body.stop_sequences or ()) or None,
        stream=body.stream,
        cache_salt=body.cache_salt,
        priority=body.priority,
    )


def _system_text(system: str | list[PlainTextBlock] | None) -> str:
    if isinstance(system, list):
        return "\n".join(block.text for block in system)
    return system or ""


def _turns(message: InputMessage) -> list[ChatMessage]:
    """The chat turns of one Messages turn."""
    content = message.content
    if isinstance(content, str):
        if message.role == "user":
            return [UserMessageParam(content=content)]
        return [AssistantMessageParam(content=content)]
    if message.role == "assistant":
        return [_assistant_turn(content)]
    return _user_turns(content)


def _assistant_turn(blocks: list[ContentBlock]) -> AssistantMessageParam:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        match block:
            case TextBlock(text=text):
                texts.append(text)
            case ToolUseBlock(id=call_id, name=name, input=arguments):
                calls.append(
                    ToolCall(
                        id=call_id,
                        function=FunctionCall(name=name, arguments=json.dumps(arguments)),
                    )
                )
            case ToolResultBlock():
                raise HTTPProblem(400, "invalid-turn", "`tool_result` blocks belong in user turns")
    return AssistantMessageParam(content="\n".join(texts), tool_calls=calls or None)


def _user_turns(blocks: list[ContentBlock]) -> list[ChatMessage]:
    """Tool results as tool turns, in order; the text around them as user turns."""
    turns: list[ChatMessage] = []
    texts: list[str] = []

    def flush_text() -> None:
        if texts:
            turns.append(UserMessageParam(content="\n".join(texts)))
            texts.clear()

    for block in blocks:
        match block:
            case TextBlock(text=text):
                texts.append(text)
            case ToolResultBlock(tool_use_id=call_id, is_error=is_error):
                flush_text()
                result = f"Error: {block.text}" if is_error else block.text
                turns.append(ToolMessageParam(content=result, tool_call_id=call_id))
            case ToolUseBlock():
                raise HTTPProblem(
                    400, "invalid-turn", "`tool_use` blocks belong in assistant turns"
                )
    flush_text()
    return turns or [UserMessageParam(content="")]


def _tool_choice(choice: MessagesToolChoice | None) -> tuple[ToolChoice | None, bool | None]:
    """Chat's ``tool_choice`` and ``parallel_tool_calls`` for Anthropic's ``tool_choice``."""
    if choice is None:
        return None, None
    single = True if getattr(choice, "disable_parallel_tool_use", None) else None
    parallel = False if single else None
    match choice:
        case ToolChoiceNone():
            return "none", None
        case ToolChoiceAny():
            return "required", parallel
        case ToolChoiceTool(name=name):
            return NamedToolChoice(type="function", function=FunctionChoice(name=name)), parallel
    return "auto", parallel
