"""Every generating endpoint's life: admission, prompt, generation, and the response.

One request goes: decode and validate the body; admit it through intake
before any tokenization; build the prompt (chat template or text) on a worker
thread; stream from the generation actor under the endpoint's deadline while
watching for the client going away; answer as one JSON body or as
server-sent events through the endpoint's writer (:mod:`api.serving.writers`); tell
intake how it ended. Chat and text completions are handled here; Anthropic's
Messages and OpenAI's Responses turn their bodies into a :class:`~api.serving.jobs.Job`,
embeddings into an :class:`~api.serving.jobs.EmbeddingJob` (one engine request for all
its inputs, answered whole), and hand it to :meth:`Completions.handle`.

A request that fails retryably before its first token (the engine restarted
under it) is retried transparently, at most twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from actors.generation.client import GenerationClient
from actors.generation.protocol import (
    Embed,
    EngineRequest,
    EngineStats,
    Failed,
    FailureKind,
    Finished,
    Generate,
    TokenChunk,
)
from api.http.asgi import Request, Responder
from api.http.observe import Observer
from api.http.problems import HTTPProblem, problem_for
from api.openai.request_types import NOT_HONOURED, ChatCompletionRequest, CompletionRequest
from api.serving.admission import Admission
from api.serving.catalog import CatalogEntry, ModelCatalog
from api.serving.choices import choice_requests, combined_end, retry_of
from api.serving.jobs import AnyJob, EmbeddingJob, Job, chat_job, text_job
from api.serving.limits import CompletionSettings, Deadline
from api.serving.outcome import Outcome, Reporter
from api.serving.prompts import sampling_params, templated
from api.serving.resumption import StreamTap, refuse_resume, resumable, resume_choice, tap_of
from api.serving.writers import ReplyContext, ReplyWriter, deadline_passed, finish_reply
from runtime import ActorDied, TroupeError

log = logging.getLogger("troupe.http")

TRANSPARENT_RETRIES = 2
CHOICES_IN_FLIGHT = 64
"""Engine requests one API request keeps in flight at once (its ``n`` choices):
enough for the engine to batch them, never a flood of one actor's mailbox."""


TOKENIZING_THREADS = 4
"""Prompts templated and tokenized at once, on threads of their own: a burst of
long prompts waits here, never in the thread pool other work (audit queries,
the engine's event pump) relies on."""


@dataclass(frozen=True)
class _Channel:
    """Where one request's choices come from (its model's generation actor) and go."""

    client: GenerationClient
    respond: Responder
    reply: ReplyWriter
    tap: StreamTap | None = None
    """Where a resumable stream reports its progress (behind a replica bridge only)."""


class Completions:
    """The handlers of ``/v1/chat/completions`` and ``/v1/completions``, and their core."""

    def __init__(
        self,
        settings: CompletionSettings,
        catalog: ModelCatalog,
        admission: Admission,
        observer: Observer,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._admission = admission
        self._observer = observer
        self.reporter = Reporter(settings.model_name, observer)
        """Reports every request; holds the audit log while the server has one."""
        self.gate: Callable[[], None] = lambda: None
        """Raises the problem (503 not ready) that refuses every request now;
        called first, so that refused requests are reported and audited too."""
        self._tokenizing = anyio.CapacityLimiter(TOKENIZING_THREADS)

    async def chat(self, request: Request, respond: Responder) -> None:
        """``POST /v1/chat/completions``."""
        await self.handle(request, respond, "chat", self._chat_job)

    async def text(self, request: Request, respond: Responder) -> None:
        """``POST /v1/completions``."""
        await self.handle(request, respond, "completions", self._text_job)

    async def handle(
        self,
        request: Request,
        respond: Responder,
        endpoint: str,
        prepare: Callable[[Request], Awaitable[AnyJob]],
    ) -> None:
        """One request under one deadline, set now: body, admission, prompt and generation.

        The deadline is the request's only one: intake books it, the engine
        drops the request if it passes while queued, and this scope answers 504
        when it passes anywhere before the response ends.
        """
        deadline = Deadline.after(self.settings.timeouts[endpoint])
        async with self.reporter.reporting(request, endpoint, self.gate) as outcome:
            job: AnyJob | None = None
            try:
                with anyio.CancelScope(deadline=deadline.loop) as scope:
                    job = await prepare(request)
                    match job:
                        case EmbeddingJob():
                            await self._serve_embedding(
                                request, respond, job, outcome, endpoint=endpoint, deadline=deadline
                            )
                        case Job():
                            await self._serve(
                                request, respond, job, outcome, endpoint=endpoint, deadline=deadline
                            )
                if scope.cancelled_caught:
                    outcome.cancelled_by = "deadline"
                    await deadline_passed(respond, job.reply if isinstance(job, Job) else None)
            finally:
                if outcome.release_due:
                    self._admission.release(request.request_id, outcome.intake_name)

    async def _chat_job(self, request: Request) -> Job:
        body = await request.json_body(
            ChatCompletionRequest, self.settings.max_body_bytes, NOT_HONOURED
        )
        await self.check_model(body.model)
        return await self.chat_job_of(body)

    async def chat_job_of(self, body: ChatCompletionRequest, continue_final: bool = False) -> Job:
        """The job of a chat request (also what Messages and Responses bodies become)."""
        tokenizer = self.catalog.get(body.model).tokenizer
        if body.response_format is None and not body.tools:
            return chat_job(body, tokenizer, continue_final)
        # Compiling a schema (up to 64 KiB) into a grammar is bounded but not free:
        # it runs on a tokenizing thread, never on the event loop.
        return await anyio.to_thread.run_sync(
            chat_job, body, tokenizer, continue_final, limiter=self._tokenizing
        )

    async def tokenized(self, make_prompt: Callable[[], list[int]]) -> list[int]:
        """A prompt templated and tokenized on a tokenizing thread (422 if the template refuses)."""
        return await anyio.to_thread.run_sync(
            templated, make_prompt, abandon_on_cancel=True, limiter=self._tokenizing
        )

    async def _text_job(self, request: Request) -> Job:
        body = await request.json_body(
            CompletionRequest, self.settings.max_body_bytes, NOT_HONOURED
        )
        return text_job(body, (await self.check_model(body.model)).tokenizer)

    async def check_model(self, model: str) -> CatalogEntry:
        """The served model ``model`` names (404 naming the served ones if none).

        Its tokenizer is loaded first, on a tokenizing thread: with several
        models, the first request for one pays for it, never the event loop.
        """
        entry = self.catalog.get(model)
        if not entry.tokenizer_loaded:
            await anyio.to_thread.run_sync(entry.tokenizer, limiter=self._tokenizing)
            entry.tokenizer_loaded = True
        return entry

    async def described(self, model: str) -> EngineStats:
        """The model's figures (context window, vocabulary ...), loading it if it is not."""
        return await self.catalog.described(self.catalog.get(model))

    async def _serve(
        self,
        request: Request,
        respond: Responder,
        job: Job,
        outcome: Outcome,
        *,
        endpoint: str,
        deadline: Deadline,
    ) -> None:
        body = job.body
        model = self.catalog.get(body.model)
        outcome.model = model.name
        info = await self.catalog.described(model)
        limit = self.settings.max_tokens_limit or info.context_length
        params = sampling_params(body, limit, job.grammar, job.logprobs)
        self.settings.check_max_tokens(body)
        await self._admit(
            request,
            outcome,
            _Booking(endpoint, job.prompt_chars, job.messages, params.max_tokens * body.n, body.n),
            model.key,
            deadline,
        )
        tracing = self.reporter.tracing
        with tracing.child(outcome.span, "tokenization"):
            # Abandoned at the deadline: the template may still be running on its
            # thread, but the client is answered 504 on time.
            prompt = await self.tokenized(job.make_prompt)
        base = Generate(
            request_id=_engine_id(request),
            prompt=prompt,
            params=params,
            deadline=deadline.wall,
            submitted_at=time.time(),
            traceparent=tracing.traceparent(outcome.span),
        )
        generates = choice_requests(base, body.n)
        outcome.prompt_tokens = len(prompt)
        self._admission.tokenized(request.request_id, outcome.prompt_tokens)
        names = None
        if job.logprobs is not None:
            names = model.names
            await anyio.to_thread.run_sync(names.prepare, limiter=self._tokenizing)
        tap = tap_of(request.scope)
        created = int(time.time()) if tap is None or tap.resume is None else tap.resume.created
        job.reply = job.reply_for(
            ReplyContext(request.request_id, model.name, outcome.prompt_tokens, names, created)
        )
        tap = resumable(tap, job.reply, generates, created)
        channel = _Channel(self.catalog.client(model), respond, job.reply, tap)

        async def run() -> None:
            runs = await self._run_choices(channel, generates, outcome)
            with tracing.child(outcome.span, "stream_end"):
                await finish_reply(channel.respond, channel.reply, outcome.end, runs)

        await self._watching_client(request, outcome, run)

    async def _serve_embedding(
        self,
        request: Request,
        respond: Responder,
        job: EmbeddingJob,
        outcome: Outcome,
        *,
        endpoint: str,
        deadline: Deadline,
    ) -> None:
        """Every input in one engine request; the vectors answered whole."""
        refuse_resume(tap_of(request.scope))
        model = self.catalog.get(job.model)
        outcome.model = model.name
        await self.catalog.described(model)
        await self._admit(
            request, outcome, _Booking(endpoint, job.prompt_chars, 1, 0, 1), model.key, deadline
        )
        tracing = self.reporter.tracing
        with tracing.child(outcome.span, "tokenization"):
            inputs = await anyio.to_thread.run_sync(
                job.tokenize, abandon_on_cancel=True, limiter=self._tokenizing
            )
        embed = Embed(
            request_id=_engine_id(request),
            inputs=inputs,
            deadline=deadline.wall,
            submitted_at=time.time(),
            traceparent=tracing.traceparent(outcome.span),
        )
        outcome.prompt_tokens = embed.prompt_tokens
        self._admission.tokenized(request.request_id, outcome.prompt_tokens)
        reply = job.reply_for(ReplyContext(request.request_id, model.name, embed.prompt_tokens))
        client = self.catalog.client(model)

        async def run() -> None:
            for attempt in range(TRANSPARENT_RETRIES + 1):
                await self._embed_once(
                    client, retry_of(embed, attempt) if attempt else embed, outcome
                )
                if not _retry_due(outcome, attempt):
                    break
            if isinstance(outcome.end, Finished):
                await reply.send_vectors(respond, outcome.end)
            elif isinstance(outcome.end, Failed):
                await respond.problem(problem_for(outcome.end))

        await self._watching_client(request, outcome, run)

    async def _admit(
        self,
        request: Request,
        outcome: Outcome,
        booking: _Booking,
        model_key: str,
        deadline: Deadline,
    ) -> None:
        """Let intake admit the request (raises the problem that refuses it)."""
        try:
            with self.reporter.tracing.child(outcome.span, "admission"):
                await self._admission.admit(
                    request,
                    booking.endpoint,
                    booking.prompt_chars,
                    booking.messages,
                    deadline.wall,
                    max_tokens=booking.max_tokens,
                    choices=booking.choices,
                    model=model_key,
                )
        except HTTPProblem as refused:
            self._observer.shed(refused.problem.slug.replace("-", "_"))
            raise
        except BaseException:
            # Cut short (the deadline, the client, the ask's own timeout) while
            # intake held the Admit: it may still book it, and with no Release
            # that booking would count as in flight until it is reclaimed, a
            # minute later, holding up a drain. The Release queues behind the
            # Admit in intake's mailbox; one for a request never booked is only
            # counted.
            outcome.release_due = True
            raise
        outcome.admitted = outcome.release_due = True

    async def _watching_client(
        self, request: Request, outcome: Outcome, run: Callable[[], Awaitable[None]]
    ) -> None:
        """``run`` the request to its answer; cancelled if the client goes away first."""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                # The server also reports a disconnect once the response is
                # complete; only one before the generation ended cuts it short.
                if outcome.end is None:
                    outcome.cancelled_by = "disconnect"
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await run()
            tg.cancel_scope.cancel()

    async def _run_choices(
        self, channel: _Channel, generates: list[Generate], outcome: Outcome
    ) -> list[Outcome]:
        """Every choice to its end; the first to fail stops the others."""
        if len(generates) == 1:
            await self._run_choice(channel, generates[0], outcome, 0)
            return [outcome]
        runs = [Outcome(timing=outcome.timing) for _ in generates]
        limiter = anyio.CapacityLimiter(CHOICES_IN_FLIGHT)
        refused: list[TroupeError] = []
        async with anyio.create_task_group() as tg:

            async def run(index: int) -> None:
                try:
                    async with limiter:
                        await self._run_choice(channel, generates[index], runs[index], index)
                except TroupeError as exc:  # a full mailbox, a stopped actor: one answer
                    refused.append(exc)
                    tg.cancel_scope.cancel()
                if isinstance(runs[index].end, Failed):
                    tg.cancel_scope.cancel()

            for index in range(len(generates)):
                tg.start_soon(run, index)
        if refused:
            raise refused[0]
        outcome.tokens_sent = sum(run.tokens_sent for run in runs)
        outcome.end = combined_end(runs)
        return runs

    async def _run_choice(
        self, channel: _Channel, generate: Generate, run: Outcome, index: int
    ) -> None:
        """One choice, retried transparently while nothing of it was sent."""
        tap = channel.tap
        if tap is not None and tap.resume is not None:
            going_on = await resume_choice(channel.reply, channel.respond, tap, generate, run)
            if going_on is None:  # it had ended: only its end is left to send
                return await self._choice_end(channel, run, index)
            generate = going_on
        for attempt in range(TRANSPARENT_RETRIES + 1):
            request = generate if attempt == 0 else retry_of(generate, attempt)
            await self._attempt(channel, request, run, index)
            if not _retry_due(run, attempt):
                break
        await self._choice_end(channel, run, index)

    async def _choice_end(self, channel: _Channel, run: Outcome, index: int) -> None:
        if channel.reply.streaming and isinstance(run.end, Finished):
            await channel.reply.send_choice_end(channel.respond, run.end, index)

    async def _attempt(
        self, channel: _Channel, generate: Generate, run: Outcome, index: int
    ) -> None:
        run.end = None
        try:
            await self._stream_into(channel, generate, run, index)
        except ActorDied:
            run.end = _died_taking(generate)

    async def _embed_once(self, client: GenerationClient, embed: Embed, outcome: Outcome) -> None:
        """One try at ``embed``: its one event, the vectors or the failure, into ``outcome``."""
        outcome.end = None
        try:
            async with client.stream(embed) as events:
                async for event in events:
                    if isinstance(event, Finished | Failed):
                        outcome.end = event
        except ActorDied:
            outcome.end = _died_taking(embed)

    async def _stream_into(
        self, channel: _Channel, generate: Generate, run: Outcome, index: int
    ) -> None:
        reply = channel.reply
        async with channel.client.stream(generate) as events:
            async for event in events:
                match event:
                    case TokenChunk(text=text, token_ids=ids, logprobs=logprobs):
                        if channel.tap is not None:
                            channel.tap.chunk(event)
                        run.timing.token()
                        run.tokens_sent += len(ids)
                        run.text += text
                        if reply.streaming:
                            await reply.send_delta(channel.respond, text, logprobs, index)
                        elif logprobs:
                            run.logprobs.extend(logprobs)
                    case Finished():
                        if channel.tap is not None:
                            channel.tap.ended(event)
                        run.end = event
                    case Failed():
                        run.end = event


@dataclass(frozen=True)
class _Booking:
    """What intake is told of a request when it admits it."""

    endpoint: str
    prompt_chars: int
    messages: int
    max_tokens: int
    choices: int


def _engine_id(request: Request) -> str:
    """A unique engine id: clients choose X-Request-ID and may reuse one."""
    return f"{request.request_id}.{uuid.uuid4().hex[:8]}"


def _died_taking(request: EngineRequest) -> Failed:
    """The end of ``request`` when the generation actor died while taking it in.

    Nothing was generated, so this is the same retryable failure as a crash.
    """
    return Failed(
        request_id=request.request_id,
        kind=FailureKind.ENGINE_CRASHED,
        retryable=True,
        detail="the engine restarted; retry",
    )


def _retry_due(run: Outcome, attempt: int) -> bool:
    """Whether try ``attempt`` of a request ended so that it is tried again, transparently."""
    end = run.end
    if not isinstance(end, Failed) or not end.retryable or run.tokens_sent:
        return False
    if attempt == TRANSPARENT_RETRIES:
        return False
    kind = end.kind.value
    log.info(
        "retrying transparently after %s",
        kind,
        extra={"event": "retry", "error_type": kind, "attempt": attempt + 1},
    )
    return True
