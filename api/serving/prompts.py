"""From an OpenAI request to what the engine takes: chat turns, the prompt, sampling.

Chat templates follow Hugging Face's conventions, which predate some of
OpenAI's: the ``developer`` role is rendered as ``system``, and tool-call
arguments arrive as JSON text but templates index into them. A template that
refuses the messages is the client's 422, whose text never quotes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from actors.generation.protocol import SamplingParams
from api.http.problems import HTTPProblem
from api.openai.request_types import (
    AssistantMessageParam,
    ChatMessage,
    DeveloperMessageParam,
    SamplingFields,
    ToolCall,
    ToolMessageParam,
)


def template_message(message: ChatMessage) -> dict[str, Any]:
    """``message`` as chat templates take it (Hugging Face's conventions).

    OpenAI's ``developer`` role is the system prompt of newer models; templates
    written before it know only ``system``. Tool-call arguments arrive as JSON
    text, and templates index into them, so they are passed parsed when they parse.
    """
    role = "system" if isinstance(message, DeveloperMessageParam) else message.__struct_config__.tag
    turn: dict[str, Any] = {"role": role, "content": message.text}
    if message.name is not None:
        turn["name"] = message.name
    match message:
        case AssistantMessageParam(tool_calls=[*calls]):
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {"name": call.function.name, "arguments": _parsed(call)},
                }
                for call in calls
            ]
        case ToolMessageParam(tool_call_id=call_id):
            turn["tool_call_id"] = call_id
    return turn


def _parsed(call: ToolCall) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments


def templated(make_prompt: Callable[[], list[int]]) -> list[int]:
    """The prompt's token ids; a template that refuses the messages is the client's 422."""
    try:
        return make_prompt()
    except Exception:
        # Chat templates raise on roles or turn orders they do not support. The
        # exception's text may quote the messages, so it is not passed on.
        raise HTTPProblem(
            422,
            "invalid-field",
            "`messages` could not be turned into a prompt by this model's chat template "
            "(an unsupported role or order of turns)",
        ) from None


def sampling_params(
    body: SamplingFields,
    default_max_tokens: int,
    grammar: str | None = None,
    logprobs: int | None = None,
) -> SamplingParams:
    """The engine's parameters for an OpenAI request (``default_max_tokens`` if it names none).

    ``grammar``: what the output must match (see :mod:`api.serving.structured`);
    ``logprobs``: alternatives per token to report (``None``: no log-probabilities).
    """
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        bias = {int(token): value for token, value in (body.logit_bias or {}).items()}
    except ValueError:
        raise HTTPProblem(422, "invalid-field", "logit_bias keys must be token ids") from None
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        stop=stops,
        grammar=grammar,
        logprobs=logprobs,
    )
