"""An embeddings job's run: every input in one engine request, the vectors answered whole.

Called by the pipeline (:mod:`api.serving.pipeline`). Embeddings never stream
and cannot be resumed by another replica; a request the engine dropped
because it restarted is tried again, as a generation is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from actors.generation.client import GenerationClient
from actors.generation.protocol import Embed, Failed, Finished
from api.http.asgi import Request, Responder
from api.http.problems import problem_for
from api.serving.choices import retry_of
from api.serving.generation import TRANSPARENT_RETRIES, died_taking, retry_due
from api.serving.jobs import EmbeddingJob
from api.serving.outcome import Outcome
from api.serving.resumption import refuse_resume, tap_of
from api.serving.writers import ReplyContext
from runtime import ActorDied

if TYPE_CHECKING:
    from api.serving.pipeline import Booking, Pipeline


async def serve_embedding(
    core: Pipeline,
    request: Request,
    respond: Responder,
    job: EmbeddingJob,
    *,
    outcome: Outcome,
    booking: Booking,
) -> None:
    """Admit and tokenize every input, then embed them all in one engine request."""
    refuse_resume(tap_of(request.scope))
    model = core.catalog.get(job.model)
    outcome.model = model.name
    await core.catalog.described(model)
    await core.admit(request, outcome, booking.of(job.prompt_chars, 1, 0, 1), model.key)
    tracing = core.reporter.tracing
    with tracing.child(outcome.span, "tokenization"):
        inputs = await anyio.to_thread.run_sync(
            job.tokenize, abandon_on_cancel=True, limiter=core.tokenizing
        )
    embed = Embed(
        request_id=core.engine_id(request),
        inputs=inputs,
        deadline=booking.deadline.wall,
        submitted_at=time.time(),
        traceparent=tracing.traceparent(outcome.span),
    )
    outcome.prompt_tokens = embed.prompt_tokens
    core.intake.tokenized(request.request_id, outcome.prompt_tokens)
    reply = job.reply_for(ReplyContext(request.request_id, model.name, embed.prompt_tokens))
    client = core.catalog.client(model)

    async def run() -> None:
        for attempt in range(TRANSPARENT_RETRIES + 1):
            await _embed_once(client, retry_of(embed, attempt) if attempt else embed, outcome)
            if not retry_due(outcome, attempt):
                break
        if isinstance(outcome.end, Finished):
            await reply.send_vectors(respond, outcome.end)
        elif isinstance(outcome.end, Failed):
            await respond.problem(problem_for(outcome.end))

    await core.watching_client(request, outcome, run)


async def _embed_once(client: GenerationClient, embed: Embed, outcome: Outcome) -> None:
    """One try at ``embed``: its one event, the vectors or the failure, into ``outcome``."""
    outcome.end = None
    try:
        async with client.stream(embed) as events:
            async for event in events:
                if isinstance(event, Finished | Failed):
                    outcome.end = event
    except ActorDied:
        outcome.end = died_taking(embed)
