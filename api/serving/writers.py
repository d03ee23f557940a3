"""What every endpoint's response writer does, whatever its wire format.

The completion machinery (:mod:`api.serving.pipeline`) runs a request's choices
and hands what they produce to a :class:`ReplyWriter`: OpenAI's chat and text
completions (:mod:`api.openai.chat_reply`), Anthropic's Messages
(:mod:`api.anthropic.message_reply`) and OpenAI's Responses
(:mod:`api.openai.responses.response_reply`); embeddings
(:mod:`api.openai.embeddings`) have a :class:`VectorsWriter` of their own. A
streamed reply starts with its first output (or at its end), never before: an
error before that is still answered with a proper status.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import msgspec

from actors.generation.protocol import Failed, Finished, TokenLogprob
from api.http.asgi import Responder
from api.http.problems import HTTPProblem, Problem, problem_for
from api.openai.bodies import ToolCallOut
from api.serving.token_names import TokenNames
from api.serving.tools.plan import ToolPlan
from api.serving.tools.scanner import ToolCallScanner, split_tool_calls

SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


@dataclass(frozen=True)
class ReplyContext:
    """What a writer knows once the prompt is tokenized."""

    request_id: str
    model: str
    prompt_tokens: int
    names: TokenNames | None = None
    """Set when the request asked for log-probabilities."""
    created: int = field(default_factory=lambda: int(time.time()))
    """When the response was created (seconds since the epoch); a resumed
    stream keeps its first server's (:mod:`api.serving.resumption`)."""


@dataclass(frozen=True)
class ChoiceResult:
    """How one choice ended, for the whole (non-streamed) body."""

    text: str
    end: Finished
    logprobs: list[TokenLogprob]

    @property
    def reason(self) -> str:
        """``stop``, ``length`` (or ``cancelled``)."""
        return self.end.reason.value


class ReplyWriter(Protocol):
    """Writes one request's response, streamed or whole."""

    @property
    def streaming(self) -> bool:
        """Whether the response is a stream of events."""
        ...

    async def send_delta(
        self,
        respond: Responder,
        text: str,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
    ) -> None:
        """Stream ``text`` of choice ``index`` (starting the stream on the first output)."""
        ...

    async def send_choice_end(self, respond: Responder, end: Finished, index: int = 0) -> None:
        """A streamed choice has ended: what it held back, then how it ended."""
        ...

    async def send_done(self, respond: Responder, end: Finished) -> None:
        """End a stream whose choices have all ended (``end``: their combined counts)."""
        ...

    async def send_whole(
        self, respond: Responder, results: list[ChoiceResult], end: Finished
    ) -> None:
        """The whole response body."""
        ...

    async def send_error(self, respond: Responder, problem: Problem) -> None:
        """End a started stream with an error event that names the request."""
        ...


class VectorsWriter(Protocol):
    """Writes the response of an embeddings request: never streamed."""

    async def send_vectors(self, respond: Responder, end: Finished) -> None:
        """The whole body, from the engine's end (its :attr:`~Finished.embeddings`)."""
        ...


class CallScanningWriter:
    """A writer of one choice whose text may hold tool calls (Messages, Responses).

    Calls are found in the text as for chat completions (:mod:`api.serving.tools.scanner`)
    and handed to :meth:`_send` whole, beside the text that is certain.
    """

    def __init__(self, tools: ToolPlan | None) -> None:
        self._tools = tools if tools is not None and tools.syntax is not None else None
        self._scanner = ToolCallScanner(self._tools) if self._tools is not None else None

    async def send_delta(
        self,
        respond: Responder,
        text: str,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
    ) -> None:
        """Stream ``text``, tool calls whole once complete."""
        calls: list[ToolCallOut] = []
        if self._scanner is not None:
            text, calls = self._scanner.feed(text)
        await self._send(respond, text, calls)

    async def _flush(self, respond: Responder) -> None:
        """Send what the scanner held back, at the end of the text."""
        if self._scanner is not None:
            await self._send(respond, *self._scanner.flush())

    def _split(self, text: str) -> tuple[str, list[ToolCallOut]]:
        """A whole answer as (text, calls)."""
        return (text, []) if self._tools is None else split_tool_calls(self._tools, text)

    async def _send(self, respond: Responder, text: str, calls: list[ToolCallOut]) -> None:
        raise NotImplementedError


def named_event(name: str, payload: object) -> bytes:
    """One server-sent event with an ``event:`` line, as Anthropic and Responses send them."""
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"


class ChoiceRun(Protocol):
    """What a choice produced, as the pipeline kept it (:class:`api.serving.outcome.Outcome`)."""

    text: str
    end: Finished | Failed | None
    logprobs: list[TokenLogprob]


async def finish_reply(
    respond: Responder,
    reply: ReplyWriter,
    end: Finished | Failed | None,
    runs: Sequence[ChoiceRun],
) -> None:
    """End the response: the error, the stream's end, or the whole body of ``runs``."""
    if isinstance(end, Failed):
        # Answered here, not raised: this runs inside the disconnect watcher's
        # task group, which would wrap an exception in a group.
        if respond.started:
            await reply.send_error(respond, problem_for(end))
        else:
            await respond.problem(problem_for(end))
        return
    assert isinstance(end, Finished)
    if reply.streaming:
        await reply.send_done(respond, end)
        return
    results = [
        ChoiceResult(run.text, run.end, run.logprobs)
        for run in runs
        if isinstance(run.end, Finished)
    ]
    await reply.send_whole(respond, results, end)


async def deadline_passed(respond: Responder, reply: ReplyWriter | None) -> None:
    """Answer 504, or end a started stream with the error event, whatever cancelled us."""
    problem = HTTPProblem(504, "deadline-exceeded", "the request's deadline passed").problem
    with anyio.CancelScope(shield=True):
        if respond.started and reply is not None:
            await reply.send_error(respond, problem)
        else:
            await respond.problem(problem)
