"""Every generating endpoint's life: admission, prompt, generation, and the response.

One request goes: decode and validate the body; admit it through intake
before any tokenization; build the prompt (chat template or text) on a worker
thread; stream from the generation actor under the endpoint's deadline while
watching for the client going away; answer as one JSON body or as
server-sent events through the endpoint's writer (:mod:`api.reply`); tell
intake how it ended. Chat and text completions are handled here; Anthropic's
Messages, OpenAI's Responses and embeddings turn their bodies into a
:class:`~api.jobs.Job` and hand it to :meth:`Completions.handle`.

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
    EngineStats,
    Failed,
    FailureKind,
    Finished,
    Generate,
    TokenChunk,
)
from api.admission import Admission
from api.catalog import CatalogEntry, ModelCatalog
from api.choices import choice_requests, combined_end, embedding_requests, retry_of
from api.completion_settings import CompletionSettings, Deadline
from api.http import Request, Responder
from api.jobs import Job, chat_job, text_job
from api.observe import Observer
from api.openai_types import NOT_HONOURED, ChatCompletionRequest, CompletionRequest
from api.outcome import Outcome, Reporter
from api.problems import HTTPProblem
from api.prompts import sampling_params, templated
from api.reply import ReplyContext, ReplyWriter, deadline_passed, finish_reply
from api.resumption import StreamTap, resumable, resume_choice, tap_of
from runtime import ActorDied, TroupeError

log = logging.getLogger("troupe.http")

TRANSPARENT_RETRIES = 2
CHOICES_IN_FLIGHT = 64
"""Engine requests one API request keeps in flight at once (its choices, or its
inputs to embed): enough for the engine to batch them, never a flood of one
actor's mailbox from a single request of 2048 inputs."""


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
        prepare: Callable[[Request], Awaitable[Job]],
    ) -> None:
        """One request under one deadline, set now: body, admission, prompt and generation.

        The deadline is the request's only one: intake books it, the engine
        drops the request if it passes while queued, and this scope answers 504
        when it passes anywhere before the response ends.
        """
        deadline = Deadline.after(self.settings.timeouts[endpoint])
        async with self.reporter.reporting(request, endpoint, self.gate) as outcome:
            job: Job | None = None
            try:
                with anyio.CancelScope(deadline=deadline.loop) as scope:
                    job = await prepare(request)
                    await self._serve(
                        request, respond, job, outcome, endpoint=endpoint, deadline=deadline
                    )
                if scope.cancelled_caught:
                    outcome.cancelled_by = "deadline"
                    await deadline_passed(respond, None if job is None else job.reply)
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
        tracing = self.reporter.tracing
        try:
            generating = job.embed_inputs is None
            with tracing.child(outcome.span, "admission"):
                await self._admission.admit(
                    request,
                    endpoint,
                    job.prompt_chars,
                    job.messages,
                    deadline.wall,
                    max_tokens=params.max_tokens * body.n if generating else 0,
                    choices=body.n if generating else 1,
                    model=model.key,
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
        # Clients choose X-Request-ID and may reuse one; the engine's id must be unique.
        engine_id = f"{request.request_id}.{uuid.uuid4().hex[:8]}"
        # Abandoned at the deadline: the template may still be running on its
        # thread, but the client is answered 504 on time.
        if job.embed_inputs is not None:
            with tracing.child(outcome.span, "tokenization"):
                prompts = await anyio.to_thread.run_sync(
                    job.embed_inputs, abandon_on_cancel=True, limiter=self._tokenizing
                )
            generates = embedding_requests(engine_id, prompts, deadline.wall)
        else:
            with tracing.child(outcome.span, "tokenization"):
                prompt = await self.tokenized(job.make_prompt)
            prompts = [prompt]
            base = Generate(
                request_id=engine_id,
                prompt=prompt,
                params=params,
                deadline=deadline.wall,
                submitted_at=time.time(),
                traceparent=tracing.traceparent(outcome.span),
            )
            generates = choice_requests(base, body.n)
        outcome.prompt_tokens = sum(len(prompt) for prompt in prompts)
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
        await self._run_watching_client(request, channel, generates, outcome)

    async def _run_watching_client(
        self,
        request: Request,
        channel: _Channel,
        generates: list[Generate],
        outcome: Outcome,
    ) -> None:
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
            runs = await self._run_choices(channel, generates, outcome)
            with self.reporter.tracing.child(outcome.span, "stream_end"):
                await finish_reply(channel.respond, channel.reply, outcome.end, runs)
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
            end = run.end
            retry = isinstance(end, Failed) and end.retryable and run.tokens_sent == 0
            if not retry or attempt == TRANSPARENT_RETRIES:
                break
            kind = end.kind.value if isinstance(end, Failed) else None
            log.info(
                "retrying transparently after %s",
                kind,
                extra={"event": "retry", "error_type": kind, "attempt": attempt + 1},
            )
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
            # The generation actor died while taking the request in: nothing was
            # generated, so this is the same retryable failure as a crash.
            run.end = Failed(
                request_id=generate.request_id,
                kind=FailureKind.ENGINE_CRASHED,
                retryable=True,
                detail="the engine restarted; retry",
            )

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
