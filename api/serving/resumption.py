"""Streams that another server can finish: what one reports, and how one is resumed.

Behind Ray Serve (:mod:`api.replicas`) a replica can die in the middle of a
stream. The ingress that holds the client's connection then asks another
replica to finish the stream from where the client's copy stopped. For that,
while a stream is resumable (one streamed choice of a generation), the
serving pipeline reports to the :class:`StreamTap` it finds in the request's
scope, in step with the bytes it sends:

* :meth:`StreamTap.started`: the response's ``created`` time, before any output;
* :meth:`StreamTap.chunk`: each :class:`TokenChunk`, before its text is written;
* :meth:`StreamTap.ended`: the choice's :class:`Finished`, before its end is written.

A resumed request carries :class:`ResumeFrom`: the ``created`` time and the
chunks the client's copy was sent, with their ends when known. The new server
first *replays* them through the same writer (same chunks, same order, so the
writer's state, tool-call scanning and event numbers included, is the one the
first server had), and the tap drops the bytes that replay writes: the client
has them. Then it resumes the engine request with those tokens (see
``Generate.resumed``), so that the tokens, ``max_tokens`` and usage run on
across both servers, and what it writes from then on goes to the client.

Nothing here knows Ray: a plain ``troupe serve`` has no tap, and a client
cannot send one (it lives in the ASGI scope's extensions, which only the
replica bridge fills).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from actors.generation.client import GenerationClient
from actors.generation.protocol import (
    Finished,
    FinishReason,
    Generate,
    StreamEvent,
    TokenChunk,
)
from api.http.asgi import Responder
from api.http.problems import HTTPProblem
from api.serving.channel import Channel
from api.serving.outcome import Outcome
from api.serving.writers import ReplyWriter
from runtime import Message

SCOPE_EXTENSION: Final = "troupe.resumable"
"""The key of the :class:`StreamTap` in an ASGI scope's ``extensions``."""


class ResumeFrom(Message, frozen=True, kw_only=True):
    """Where a resumed stream starts: what its client was already sent."""

    created: int
    """The ``created`` time of the response, kept across servers."""
    chunks: list[TokenChunk] = msgspec.field(default_factory=list)
    end: Finished | None = None
    """The choice had ended, its end not yet sent: nothing is left to generate."""

    @property
    def tokens(self) -> list[int]:
        """The token ids already generated and sent."""
        return [token for chunk in self.chunks for token in chunk.token_ids]


class StreamProgress(Message, frozen=True, kw_only=True):
    """What a resumable stream reported since its previous part."""

    created: int | None = None
    chunks: list[TokenChunk] = msgspec.field(default_factory=list)
    end: Finished | None = None

    def then(self, later: StreamProgress) -> StreamProgress:
        """This progress followed by ``later``'s."""
        return StreamProgress(
            created=later.created if later.created is not None else self.created,
            chunks=[*self.chunks, *later.chunks],
            end=later.end if later.end is not None else self.end,
        )


class SentSoFar:
    """What one stream's client was sent, as the servers writing it reported (the ingress's)."""

    def __init__(self) -> None:
        self._created: int | None = None
        self._chunks: list[TokenChunk] = []
        self._end: Finished | None = None

    @property
    def tokens(self) -> int:
        """Tokens sent so far."""
        return sum(len(chunk.token_ids) for chunk in self._chunks)

    def note(self, progress: StreamProgress | None) -> None:
        """The client was sent the part that carried ``progress``."""
        if progress is None:
            return
        if progress.created is not None:
            self._created = progress.created
        self._chunks.extend(progress.chunks)
        if progress.end is not None:
            self._end = progress.end

    def resume_from(self) -> ResumeFrom | None:
        """Where another replica goes on; ``None``: the stream is not resumable."""
        if self._created is None:
            return None
        return ResumeFrom(created=self._created, chunks=list(self._chunks), end=self._end)


class Replayed:
    """Noted once a resumed stream's replay is written: what the writer sends next is new."""


class StreamTap:
    """Where the serving pipeline reports a resumable stream (from the replica bridge).

    ``note`` receives each report in order with the response's own messages,
    so the bridge knows which reports precede which bytes.
    """

    def __init__(
        self, note: Callable[[StreamProgress | Replayed], None], resume: ResumeFrom | None
    ) -> None:
        self._note = note
        self.resume = resume

    def started(self, created: int) -> None:
        """The stream is resumable, and its response was created at ``created``."""
        self._note(StreamProgress(created=created))

    def chunk(self, chunk: TokenChunk) -> None:
        """``chunk`` is about to be written."""
        self._note(StreamProgress(chunks=[chunk]))

    def ended(self, end: Finished) -> None:
        """The choice ended; its end is about to be written."""
        self._note(StreamProgress(end=end))

    def replayed(self) -> None:
        """The replay is written; from now on the bytes are the client's."""
        self._note(Replayed())


def tap_of(scope: Mapping[str, Any]) -> StreamTap | None:
    """The tap a replica's bridge put in ``scope``; ``None`` when not behind one."""
    tap = scope.get("extensions", {}).get(SCOPE_EXTENSION)
    return tap if isinstance(tap, StreamTap) else None


def channel_for(
    client: GenerationClient,
    respond: Responder,
    reply: ReplyWriter,
    scope: Mapping[str, Any],
    *,
    generates: list[Generate],
    created: int,
) -> Channel:
    """The channel of a request: tapped if its stream can be resumed (one streamed choice).

    A stream of several choices is not resumable: its choices end at different
    times, and a replica lost under it ends it with an error event.
    """
    tap = tap_of(scope)
    if tap is None:
        return Channel(client, respond, reply)
    if not reply.streaming or len(generates) != 1:
        refuse_resume(tap)
        return Channel(client, respond, reply)
    tap.started(created)
    return TappedChannel(client, respond, reply, tap)


def refuse_resume(tap: StreamTap | None) -> None:
    """400 if ``tap`` asks to resume a request that is not a stream of one choice."""
    if tap is not None and tap.resume is not None:
        raise HTTPProblem(400, "not-resumable", "only a stream of one choice can be resumed")


@dataclass(frozen=True)
class TappedChannel(Channel):
    """A resumable stream's channel: each event reported to the tap before it is written."""

    tap: StreamTap

    @contextlib.asynccontextmanager
    async def stream(self, generate: Generate) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        """The engine's events, each noted by the tap on its way to the writer."""
        async with (
            self.client.stream(generate) as events,
            contextlib.aclosing(self._tapped(events)) as tapped,
        ):
            yield tapped

    async def _tapped(
        self, events: AsyncIterator[StreamEvent]
    ) -> AsyncGenerator[StreamEvent, None]:
        async for event in events:
            match event:
                case TokenChunk():
                    self.tap.chunk(event)
                case Finished():
                    self.tap.ended(event)
                case _:
                    pass
            yield event

    async def begin(self, generate: Generate, run: Outcome) -> Generate | None:
        """Replay what the client has, then the engine request that goes on from there.

        ``None``: the choice had ended (``run.end`` is its end), nothing is left to generate.
        """
        resume = self.tap.resume
        if resume is None:
            return generate
        await replay(self.reply, self.respond, resume)
        self.tap.replayed()
        run.tokens_sent = len(resume.tokens)
        run.text = "".join(chunk.text for chunk in resume.chunks)
        going_on = resumed(generate, resume, run.prompt_tokens)
        if isinstance(going_on, Finished):
            run.end = going_on
            return None
        return going_on


def resumed(generate: Generate, resume: ResumeFrom, prompt_tokens: int) -> Generate | Finished:
    """The engine request that goes on after ``resume``, or its end when nothing is left.

    Without a recorded end, a choice that had produced all of ``max_tokens``
    ended there (the server died between its last token and its end).
    """
    if resume.end is not None:
        return resume.end
    tokens = resume.tokens
    if len(tokens) >= generate.params.max_tokens:
        return Finished(
            request_id=generate.request_id,
            reason=FinishReason.LENGTH,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
        )
    return msgspec.structs.replace(generate, resumed=tokens, prefill_group=None)


async def replay(reply: ReplyWriter, respond: Responder, resume: ResumeFrom) -> None:
    """Write what the client was sent again, chunk by chunk, to bring ``reply`` to its state."""
    for chunk in resume.chunks:
        await reply.send_delta(respond, chunk.text, chunk.logprobs, 0)
