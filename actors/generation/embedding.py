"""Embeddings inside the engine: prompts pooled in batches between decode steps.

A request with ``Generate.embed`` never enters the generation batch. It waits
here, and each turn of the engine's loop runs one forward pass over as many
waiting prompts as fit a token budget (at least one), so a burst of
embeddings delays the running streams by one bounded pass per step, as a long
prompt's prefill chunks do.

The embedding is what llama.cpp's ``--embeddings`` and vLLM's pooling runner
give for a decoder model: the final hidden states (after the last norm),
mean-pooled over the prompt's tokens and L2-normalised. Prompts are padded on
the right: under the causal mask no real token attends to padding, so a
prompt's vector does not depend on the batch it ran in (up to floating-point
rounding in differently shaped matmuls).

Runs on the engine thread (no anyio).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import mlx.core as mx

from actors.generation.ports import ModelLike
from actors.generation.protocol import (
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    Generate,
    StreamEvent,
)
from actors.generation.requests import expired, never_started, vocab_size

PAD_TOKEN = 0
"""Fills the short prompts of a batch; never attended to by a real token."""


class EmbeddingQueue:
    """The embedding requests waiting for the engine, run in token-bounded batches."""

    def __init__(self, loaded: ModelLike, token_budget: int) -> None:
        self._loaded = loaded
        self._budget = max(1, token_budget)
        self._waiting: deque[Generate] = deque()
        self._running: list[Generate] = []
        """The batch of the pass under way: ended by the engine if the pass fails."""
        self._vocab = vocab_size(loaded)
        self.pooled_tokens = 0
        """Prompt tokens embedded so far."""

    def __len__(self) -> int:
        return len(self._waiting) + len(self._running)

    def add(self, request: Generate) -> Failed | None:
        """Queue ``request``, or the failure that says why it cannot be embedded."""
        problem = self._problem(request)
        if problem is None:
            self._waiting.append(request)
        return problem

    def cancel(self, request_id: str) -> Finished | None:
        """The end of a waiting request cancelled now (``None``: not waiting here)."""
        for request in self._waiting:
            if request.request_id == request_id:
                self._waiting.remove(request)
                return never_started(request)
        return None

    def drain(self) -> list[Generate]:
        """Every request not answered yet, removed (the engine is ending or recovering)."""
        drained = [*self._running, *self._waiting]
        self._running = []
        self._waiting.clear()
        return drained

    def step(self) -> list[StreamEvent]:
        """Embed the next batch: the oldest waiting prompts that fit the token budget."""
        events: list[StreamEvent] = []
        batch: list[Generate] = []
        while self._waiting and self._fits(batch, self._waiting[0]):
            request = self._waiting.popleft()
            if request.deadline is not None and time.time() >= request.deadline:
                events.append(expired(request))
            else:
                batch.append(request)
        if batch:
            self._running = batch
            vectors = pooled(self._loaded.model, [request.prompt for request in batch])
            self._running = []
            self.pooled_tokens += sum(len(request.prompt) for request in batch)
            events.extend(
                _finished(request, vector) for request, vector in zip(batch, vectors, strict=True)
            )
        return events

    def _fits(self, batch: list[Generate], request: Generate) -> bool:
        """Whether ``request`` joins ``batch`` within the budget (the first always does)."""
        if not batch:
            return True
        longest = max(len(request.prompt), *(len(r.prompt) for r in batch))
        return longest * (len(batch) + 1) <= self._budget

    def _problem(self, request: Generate) -> Failed | None:
        def failed(kind: FailureKind, detail: str) -> Failed:
            return Failed(request_id=request.request_id, kind=kind, retryable=False, detail=detail)

        prompt = request.prompt
        if not prompt:
            return failed(FailureKind.INVALID_REQUEST, "the input is empty")
        if any(not 0 <= token < self._vocab for token in prompt):
            return failed(FailureKind.INVALID_REQUEST, f"token ids must be below {self._vocab}")
        window = self._loaded.context_length
        if len(prompt) > window:
            return failed(
                FailureKind.PROMPT_TOO_LONG,
                f"the input has {len(prompt)} tokens but the context window is {window} tokens",
            )
        if not callable(getattr(self._loaded.model, "model", None)):
            return failed(FailureKind.INVALID_REQUEST, "this model cannot give embeddings")
        return None


def embedding_size(loaded: ModelLike) -> int:
    """Dimensions of the model's embeddings: its hidden size (0 where unknown)."""
    size = getattr(getattr(loaded.model, "args", None), "hidden_size", 0)
    return size if isinstance(size, int) else 0


def pooled(model: Any, prompts: list[list[int]]) -> list[list[float]]:
    """The mean-pooled, L2-normalised final hidden states of each prompt."""
    lengths = [len(prompt) for prompt in prompts]
    longest = max(lengths)
    padded = mx.array([prompt + [PAD_TOKEN] * (longest - len(prompt)) for prompt in prompts])
    # mlx-lm's models keep the transformer (embeddings, layers, final norm) as
    # ``model.model``: its output is the hidden states the LM head would read.
    hidden = model.model(padded).astype(mx.float32)
    mask = (mx.arange(longest)[None, :] < mx.array(lengths)[:, None]).astype(mx.float32)
    mean = (hidden * mask[:, :, None]).sum(axis=1) / mx.array(lengths, dtype=mx.float32)[:, None]
    norm = mx.maximum(mx.sqrt((mean * mean).sum(axis=1, keepdims=True)), 1e-12)
    vectors = mean / norm
    mx.eval(vectors)
    rows: list[list[float]] = vectors.tolist()
    return rows


def _finished(request: Generate, vector: list[float]) -> Finished:
    return Finished(
        request_id=request.request_id,
        reason=FinishReason.STOP,
        prompt_tokens=len(request.prompt),
        completion_tokens=0,
        queued_s=None if request.submitted_at is None else time.time() - request.submitted_at,
        embedding=vector,
    )
