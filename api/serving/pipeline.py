"""Every generating request's life, whatever its protocol: the serving core.

One request goes: decode and validate the body into a job (the protocol's
``prepare``); admit it through intake before any tokenization; build the
prompt (chat template or text) on a tokenizing thread; stream from the
generation actor under the endpoint's deadline while watching for the client
going away; answer through the protocol's reply writer
(:mod:`api.serving.writers`); tell intake how it ended. OpenAI's chat and
text completions, Anthropic's Messages and OpenAI's Responses are each a
:class:`~api.serving.jobs.Job` (:mod:`api.serving.generation` runs it);
embeddings are an :class:`~api.serving.jobs.EmbeddingJob` (one engine request
for all its inputs, answered whole: :mod:`api.serving.embedding`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio

from actors.generation.protocol import EngineStats
from api.http.asgi import Request, Responder
from api.http.observe import Observer
from api.http.problems import HTTPProblem
from api.http.tenants import tenant_of
from api.openai.request_types import ChatCompletionRequest
from api.serving.catalog import CatalogEntry, ModelCatalog
from api.serving.embedding import serve_embedding
from api.serving.generation import serve_generation
from api.serving.intake_client import IntakeClient
from api.serving.jobs import AnyJob, EmbeddingJob, Job, ReplyFactory, chat_job
from api.serving.limits import Deadline, ServingLimits
from api.serving.outcome import Cancellation, Outcome, Reporter
from api.serving.prompts import templated
from api.serving.writers import deadline_passed

TOKENIZING_THREADS = 4
"""Prompts templated and tokenized at once, on threads of their own: a burst of
long prompts waits here, never in the thread pool other work (audit queries,
the engine's event pump) relies on."""


@dataclass(frozen=True)
class Booking:
    """What intake is told of a request when it admits it."""

    endpoint: str
    deadline: Deadline
    prompt_chars: int = 0
    messages: int = 1
    max_tokens: int = 0
    """Completion tokens it may generate over all its choices (its KV cache)."""
    choices: int = 1

    def of(self, prompt_chars: int, messages: int, max_tokens: int, choices: int) -> Booking:
        """This booking, with what the decoded job asks for."""
        return dataclasses.replace(
            self,
            prompt_chars=prompt_chars,
            messages=messages,
            max_tokens=max_tokens,
            choices=choices,
        )


class Pipeline:
    """Runs a request of any protocol: admission, prompt, engine, reply, report."""

    def __init__(
        self,
        limits: ServingLimits,
        catalog: ModelCatalog,
        intake: IntakeClient,
        observer: Observer,
        *,
        reporter: Reporter,
        gate: Callable[[], None],
    ) -> None:
        """``gate`` raises the problem (503 not ready) that refuses every request now.

        It runs first, inside the report, so refused requests are reported too.
        """
        self.limits = limits
        self.catalog = catalog
        self.intake = intake
        self.reporter = reporter
        self._observer = observer
        self._gate = gate
        self.tokenizing = anyio.CapacityLimiter(TOKENIZING_THREADS)

    def set_timeouts(self, timeouts: Mapping[str, float]) -> None:
        """New per-endpoint deadlines: a request reads its deadline once, when it starts."""
        self.limits = dataclasses.replace(self.limits, timeouts=timeouts)

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
        deadline = Deadline.after(self.limits.timeouts[endpoint])
        booking = Booking(endpoint, deadline)
        async with self.reporter.reporting(request, endpoint, self._gate) as outcome:
            try:
                with anyio.CancelScope(deadline=deadline.loop) as scope:
                    match await prepare(request):
                        case EmbeddingJob() as embedding:
                            await serve_embedding(
                                self, request, respond, embedding, outcome=outcome, booking=booking
                            )
                        case Job() as job:
                            await serve_generation(
                                self, request, respond, job, outcome=outcome, booking=booking
                            )
                if scope.cancelled_caught:
                    outcome.cancelled_by = Cancellation.DEADLINE
                    await deadline_passed(respond, outcome.reply)
            finally:
                if outcome.release_due:
                    self.intake.release(request.request_id, outcome.ending)

    def reporting(self, request: Request, endpoint: str) -> AbstractAsyncContextManager[Outcome]:
        """Report a request that generates nothing (``count_tokens``) as every other is."""
        return self.reporter.reporting(request, endpoint, self._gate)

    async def chat_job_of(
        self, body: ChatCompletionRequest, reply_for: ReplyFactory, continue_final: bool = False
    ) -> Job:
        """The job of a chat request (also what Messages and Responses bodies become)."""
        tokenizer = self.catalog.get(body.model).tokenizer
        if body.response_format is None and not body.tools:
            return chat_job(body, tokenizer, reply_for, continue_final)
        # Compiling a schema (up to 64 KiB) into a grammar is bounded but not free:
        # it runs on a tokenizing thread, never on the event loop.
        return await anyio.to_thread.run_sync(
            chat_job, body, tokenizer, reply_for, continue_final, limiter=self.tokenizing
        )

    async def tokenized(self, make_prompt: Callable[[], list[int]]) -> list[int]:
        """A prompt templated and tokenized on a tokenizing thread (422 if the template refuses)."""
        return await anyio.to_thread.run_sync(
            templated, make_prompt, abandon_on_cancel=True, limiter=self.tokenizing
        )

    async def check_model(self, model: str) -> CatalogEntry:
        """The served model ``model`` names (404 naming the served ones if none).

        Its tokenizer is loaded first, on a tokenizing thread: with several
        models, the first request for one pays for it, never the event loop.
        """
        entry = self.catalog.get(model)
        if not entry.tokenizer_loaded:
            await anyio.to_thread.run_sync(entry.tokenizer, limiter=self.tokenizing)
            entry.tokenizer_loaded = True
        return entry

    async def described(self, model: str) -> EngineStats:
        """The model's figures (context window, vocabulary ...), loading it if it is not."""
        return await self.catalog.described(self.catalog.get(model))

    async def admit(
        self, request: Request, outcome: Outcome, booking: Booking, model_key: str
    ) -> None:
        """Let intake admit the request (raises the problem that refuses it)."""
        try:
            with self.reporter.tracing.child(outcome.span, "admission"):
                await self.intake.admit(
                    request,
                    booking.endpoint,
                    booking.prompt_chars,
                    booking.messages,
                    booking.deadline.wall,
                    max_tokens=booking.max_tokens,
                    choices=booking.choices,
                    model=model_key,
                )
        except HTTPProblem as refused:
            reason = refused.problem.slug.replace("-", "_")
            self._observer.shed(reason, tenant_of(request) or "")
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

    async def watching_client(
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
                    outcome.cancelled_by = Cancellation.DISCONNECT
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await run()
            tg.cancel_scope.cancel()

    @staticmethod
    def engine_id(request: Request) -> str:
        """A unique engine id: clients choose X-Request-ID and may reuse one."""
        return f"{request.request_id}.{uuid.uuid4().hex[:8]}"
