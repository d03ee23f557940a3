"""A generating job's run: its engine requests, its choices, and the reply as they stream.

Called by the pipeline (:mod:`api.serving.pipeline`) once a job is decoded:
the sampling parameters are checked, intake admits the request, the prompt is
tokenized on a tokenizing thread, and each of the ``n`` choices streams from
the generation actor into the protocol's reply writer. A choice that fails
retryably before any of its tokens was sent (the engine restarted under it)
is retried transparently, at most :data:`TRANSPARENT_RETRIES` times.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from actors.generation.protocol import (
    EngineRequest,
    Failed,
    FailureKind,
    Finished,
    Generate,
    TokenChunk,
)
from api.http.asgi import Request, Responder
from api.http.tenants import tenant_of
from api.serving.cache_scope import cache_namespace
from api.serving.channel import Channel
from api.serving.choices import choice_requests, combined_end, retry_of
from api.serving.jobs import Job
from api.serving.outcome import Outcome
from api.serving.prompts import sampling_params
from api.serving.resumption import channel_for, tap_of
from api.serving.writers import ReplyContext, finish_reply
from runtime import ActorDied, TroupeError

if TYPE_CHECKING:
    from api.serving.pipeline import Booking, Pipeline

log = logging.getLogger("troupe.http")

TRANSPARENT_RETRIES = 2
CHOICES_IN_FLIGHT = 64
"""Engine requests one API request keeps in flight at once (its ``n`` choices):
enough for the engine to batch them, never a flood of one actor's mailbox."""


async def serve_generation(
    core: Pipeline,
    request: Request,
    respond: Responder,
    job: Job,
    *,
    outcome: Outcome,
    booking: Booking,
) -> None:
    """Admit, tokenize and run ``job``'s choices, answering through its reply writer."""
    body = job.body
    model = core.catalog.get(body.model)
    outcome.model = model.name
    info = await core.catalog.described(model)
    limit = core.limits.max_tokens_limit or info.context_length
    params = sampling_params(body, limit, job.grammar, job.logprobs)
    core.limits.check_max_tokens(body)
    booking = booking.of(job.prompt_chars, job.messages, params.max_tokens * body.n, body.n)
    await core.admit(request, outcome, booking, model.key)
    tracing = core.reporter.tracing
    with tracing.child(outcome.span, "tokenization"):
        # Abandoned at the deadline: the template may still be running on its
        # thread, but the client is answered 504 on time.
        prompt = await core.tokenized(job.make_prompt)
    base = Generate(
        request_id=core.engine_id(request),
        prompt=prompt,
        params=params,
        deadline=booking.deadline.wall,
        submitted_at=time.time(),
        traceparent=tracing.traceparent(outcome.span),
        cache_namespace=cache_namespace(tenant_of(request), body.cache_salt),
        tenant=tenant_of(request) or "",
        weight=float(request.scope.get("state", {}).get("tenant_weight", 1.0)),
        priority=body.priority or 0,
    )
    generates = choice_requests(base, body.n)
    outcome.prompt_tokens = len(prompt)
    core.intake.tokenized(request.request_id, outcome.prompt_tokens)
    names = None
    if job.logprobs is not None:
        names = model.names
        await anyio.to_thread.run_sync(names.prepare, limiter=core.tokenizing)
    tap = tap_of(request.scope)
    created = int(time.time()) if tap is None or tap.resume is None else tap.resume.created
    context = ReplyContext(request.request_id, model.name, outcome.prompt_tokens, names, created)
    reply = outcome.reply = job.reply_for(context, job.tools)
    client = core.catalog.client(model)
    channel = channel_for(
        client, respond, reply, request.scope, generates=generates, created=created
    )

    async def run() -> None:
        runs = await _run_choices(channel, generates, outcome)
        with tracing.child(outcome.span, "stream_end"):
            await finish_reply(channel.respond, channel.reply, outcome.end, runs)

    await core.watching_client(request, outcome, run)


async def _run_choices(
    channel: Channel, generates: list[Generate], outcome: Outcome
) -> list[Outcome]:
    """Every choice to its end; the first to fail stops the others."""
    if len(generates) == 1:
        await _run_choice(channel, generates[0], outcome, 0)
        return [outcome]
    runs = [Outcome(timing=outcome.timing) for _ in generates]
    limiter = anyio.CapacityLimiter(CHOICES_IN_FLIGHT)
    refused: list[TroupeError] = []
    async with anyio.create_task_group() as tg:

        async def run(index: int) -> None:
            try:
                async with limiter:
                    await _run_choice(channel, generates[index], runs[index], index)
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


async def _run_choice(channel: Channel, generate: Generate, run: Outcome, index: int) -> None:
    """One choice, retried transparently while nothing of it was sent."""
    going_on = await channel.begin(generate, run)
    if going_on is not None:
        for attempt in range(TRANSPARENT_RETRIES + 1):
            request = going_on if attempt == 0 else retry_of(going_on, attempt)
            run.end = None
            try:
                await _stream_into(channel, request, run, index)
            except ActorDied:
                run.end = died_taking(request)
            if not retry_due(run, attempt):
                break
    if channel.reply.streaming and isinstance(run.end, Finished):
        await channel.reply.send_choice_end(channel.respond, run.end, index)


async def _stream_into(channel: Channel, generate: Generate, run: Outcome, index: int) -> None:
    """The hot path: each event of one engine request, into the run and the reply."""
    reply = channel.reply
    async with channel.stream(generate) as events:
        async for event in events:
            match event:
                case TokenChunk(text=text, token_ids=ids, logprobs=logprobs):
                    run.timing.token()
                    run.tokens_sent += len(ids)
                    run.text += text
                    if reply.streaming:
                        await reply.send_delta(channel.respond, text, logprobs, index)
                    elif logprobs:
                        run.logprobs.extend(logprobs)
                case Finished() | Failed():
                    run.end = event


def died_taking(request: EngineRequest) -> Failed:
    """The end of ``request`` when the generation actor died while taking it in.

    Nothing was generated, so this is the same retryable failure as a crash.
    """
    return Failed(
        request_id=request.request_id,
        kind=FailureKind.ENGINE_CRASHED,
        retryable=True,
        detail="the engine restarted; retry",
    )


def retry_due(run: Outcome, attempt: int) -> bool:
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
