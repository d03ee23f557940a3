"""``POST /v1/embeddings``: the served model's embeddings, batched in the engine.

All the inputs of a request travel to the engine as one request
(:class:`~actors.generation.protocol.Embed`), which is cancelled, retried after
an engine restart and bounded by the deadline (``--embeddings-timeout``) as a
whole; the engine pools the inputs, its own and other requests', into forward
passes as large as its token budget allows (:mod:`actors.generation.engine.embedding_queue`),
and answers with every vector at once, as float32 bytes that base64 encodes
as they are.
The vector is the final hidden states mean-pooled over the input's tokens and
L2-normalised, as llama.cpp's ``--embeddings`` and vLLM's pooling runner give
for a decoder model. ``dimensions`` is accepted only as the model's own size:
shortening such a vector is meaningful only for a model trained for it.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from actors.generation.protocol import Finished
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem, Problem
from api.openai.request_types import TokenId
from api.serving.jobs import EmbeddingJob
from api.serving.pipeline import Pipeline
from api.serving.writers import ReplyContext

MAX_INPUTS = 2048
"""Inputs one request may carry (OpenAI's limit)."""


class EmbeddingRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/embeddings``: a string, strings, token ids, or lists of token ids."""

    model: str
    # msgspec allows one array type per union; the handler checks the list's shape.
    input: (
        Annotated[str, Meta(min_length=1)]
        | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1, max_length=MAX_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class Embedding(Struct, frozen=True, kw_only=True):
    """One input's vector: floats, or base64 of little-endian float32."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Struct, frozen=True, kw_only=True):
    """Tokens read: every input's."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, frozen=True, kw_only=True):
    """The response of ``/v1/embeddings``."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Embeddings:
    """The handler of ``/v1/embeddings``, over the serving pipeline."""

    def __init__(self, core: Pipeline) -> None:
        self._core = core

    async def create(self, request: Request, respond: Responder) -> None:
        """``POST /v1/embeddings``."""
        await self._core.handle(request, respond, "embeddings", self._job)

    async def _job(self, request: Request) -> EmbeddingJob:
        core = self._core
        body = await request.json_body(EmbeddingRequest, core.limits.max_body_bytes)
        tokenizer = (await core.check_model(body.model)).tokenizer
        if body.dimensions is not None:
            size = (await core.described(body.model)).embedding_size
            if body.dimensions != size:
                raise HTTPProblem(
                    422,
                    "unsupported-field",
                    f"`dimensions`: this model's embeddings have {size} dimensions "
                    "and cannot be shortened",
                )
        texts, ids = _inputs(body.input)

        def tokenize() -> list[list[int]]:
            if ids is not None:
                return ids
            return [[int(token) for token in tokenizer().encode(text)] for text in texts]

        return EmbeddingJob(
            model=body.model,
            prompt_chars=sum(len(text) for text in texts) or sum(len(i) for i in ids or ()),
            tokenize=tokenize,
            reply_for=lambda context: EmbeddingsReply(context, body.encoding_format),
        )


def _inputs(given: str | list[Any]) -> tuple[list[str], list[list[int]] | None]:
    """(texts, ``None``) or ([], token ids): 422 unless one kind throughout."""
    if isinstance(given, str):
        return [given], None
    if all(isinstance(item, str) for item in given):
        if not all(given):
            raise HTTPProblem(422, "invalid-field", "`input` strings must not be empty")
        return list(given), None
    if all(isinstance(item, int) for item in given):
        return [], [list(given)]
    if all(isinstance(item, list) and item for item in given):
        return [], [[int(token) for token in item] for item in given]
    raise HTTPProblem(
        422,
        "invalid-field",
        "`input` must be a string, strings, token ids, or non-empty lists of token ids",
    )


class EmbeddingsReply:
    """Writes the embeddings of every input, in order.

    A :class:`~api.serving.writers.VectorsWriter`.
    """

    def __init__(self, context: ReplyContext, encoding: str) -> None:
        self.context = context
        self._encoding = encoding

    async def send_vectors(self, respond: Responder, end: Finished) -> None:
        """The list of embeddings and the tokens read."""
        vectors = end.embeddings
        if not vectors or any(not vector for vector in vectors):
            # An engine that ended an input without its vector: never an empty one.
            await respond.problem(
                Problem(500, "internal-error", "the server failed to embed an input")
            )
            return
        data = [
            Embedding(index=index, embedding=self._encoded(vector))
            for index, vector in enumerate(vectors)
        ]
        usage = EmbeddingUsage(prompt_tokens=end.prompt_tokens, total_tokens=end.prompt_tokens)
        await respond.json(200, EmbeddingList(data=data, model=self.context.model, usage=usage))

    def _encoded(self, vector: bytes) -> list[float] | str:
        """``vector`` (little-endian float32) as OpenAI's floats, or its base64 as it is."""
        if self._encoding == "base64":
            return base64.b64encode(vector).decode()
        floats = array.array("f", vector)
        if sys.byteorder != "little":
            floats.byteswap()
        return floats.tolist()
