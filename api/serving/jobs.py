"""From a decoded request to a job: its prompt builder, grammar, tools and logprobs.

A job is one of two kinds: :class:`Job` generates (chat requests are templated
with their tools, if offered; text requests are a string or token ids), and
:class:`EmbeddingJob` embeds a list of inputs. Everything the engine will be asked to enforce is
decided here, before admission, so that a request the server cannot honour is
refused without waiting in the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api.http.problems import HTTPProblem
from api.openai.request_types import ChatCompletionRequest, CompletionRequest, SamplingFields
from api.serving.prompts import template_message
from api.serving.structured import response_grammar
from api.serving.tools.generic import generic_turns
from api.serving.tools.plan import ToolPlan, plan_tools
from api.serving.writers import ReplyContext, ReplyWriter, VectorsWriter

ReplyFactory = Callable[[ReplyContext, ToolPlan | None], ReplyWriter]
"""A protocol's writer for a job's response, made once the prompt is known.

Given the job's tools (parsed out of the answer), or ``None`` for a text job.
"""


@dataclass(frozen=True)
class Job:
    """A decoded request, ready to be admitted and run."""

    body: SamplingFields
    prompt_chars: int
    """Characters of the prompt (all message texts together), for intake's estimate."""
    make_prompt: Callable[[], list[int]]
    """Templates and tokenizes the prompt (on a worker thread)."""
    reply_for: ReplyFactory
    """The response's writer, once the prompt is known."""
    messages: int = 1
    grammar: str | None = None
    """What the output must match (``response_format``, a forced tool call); ``None``: free."""
    tools: ToolPlan | None = None
    """A chat request's tools: offered in the prompt, parsed out of the answer."""
    logprobs: int | None = None
    """Alternatives per token to report; ``None``: no log-probabilities."""


@dataclass(frozen=True)
class EmbeddingJob:
    """A decoded embeddings request: inputs to tokenize, then one engine request."""

    model: str
    prompt_chars: int
    """Characters (or token ids) of every input together, for intake's estimate."""
    tokenize: Callable[[], list[list[int]]]
    """Tokenizes every input (on a worker thread)."""
    reply_for: Callable[[ReplyContext], VectorsWriter]
    """The response's writer, once the inputs are tokenized."""


AnyJob = Job | EmbeddingJob


def chat_job(
    body: ChatCompletionRequest,
    tokenizer: Callable[[], Any],
    reply_for: ReplyFactory,
    continue_final: bool = False,
) -> Job:
    """The job of a chat completion; ``tokenizer`` returns mlx-lm's wrapper.

    ``reply_for`` writes the answer in the protocol that asked: chat, Messages
    or Responses (each of which becomes a chat request).

    ``continue_final``: the last message is the start of the answer (an
    assistant prefill, as Anthropic's API takes it), which the model continues
    rather than starting a new turn.
    """
    messages = [template_message(message) for message in body.messages]
    tools = plan_tools(body, tokenizer())
    grammar = response_grammar(body.response_format)
    if tools.grammar is not None:
        grammar = tools.grammar  # a forced call is the whole answer: no text to format
    elif grammar is not None and tools.syntax is not None:
        raise HTTPProblem(
            400,
            "conflicting-fields",
            "`response_format`: with `tools`, only when `tool_choice` forces a call or is none",
        )

    def make_prompt() -> list[int]:
        # Hugging Face's continue_final_message: the rendered conversation is cut
        # right after the final message's text (its end-of-turn marker dropped).
        ending = (
            {"continue_final_message": True, "add_generation_prompt": False}
            if continue_final
            else {"add_generation_prompt": True}
        )
        turns = generic_turns(messages, tools.tools) if tools.generic else messages
        ids = tokenizer().apply_chat_template(turns, tools=tools.template_tools, **ending)
        return [int(token) for token in ids]

    return Job(
        body=body,
        prompt_chars=sum(len(message.text) for message in body.messages),
        make_prompt=make_prompt,
        reply_for=reply_for,
        messages=len(messages),
        grammar=grammar,
        tools=tools,
        logprobs=_chat_logprobs(body),
    )


def text_job(body: CompletionRequest, tokenizer: Callable[[], Any], reply_for: ReplyFactory) -> Job:
    """The job of a text completion: a string, one string in a list, or token ids."""
    prompt = body.prompt
    if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
        ids = [int(token) for token in prompt]
        return Job(
            body=body,
            prompt_chars=len(ids),
            make_prompt=lambda: ids,
            reply_for=reply_for,
            logprobs=body.logprobs,
        )
    if isinstance(prompt, list) and (len(prompt) != 1 or not isinstance(prompt[0], str)):
        raise HTTPProblem(
            422, "invalid-field", "`prompt` must be a string, one string, or token ids"
        )
    text = prompt[0] if isinstance(prompt, list) else prompt
    assert isinstance(text, str)
    return Job(
        body=body,
        prompt_chars=len(text),
        make_prompt=lambda: [int(token) for token in tokenizer().encode(text)],
        reply_for=reply_for,
        logprobs=body.logprobs,
    )


def _chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """Alternatives per token a chat request asks for; ``None``: no log-probabilities."""
    if body.logprobs:
        return body.top_logprobs or 0
    if body.top_logprobs:
        raise HTTPProblem(400, "conflicting-fields", "`top_logprobs` needs `logprobs: true`")
    return None
