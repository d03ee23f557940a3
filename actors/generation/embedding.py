"""Embeddings inside the engine: prompts pooled in batches between decode steps.

A request with ``Generate.embed`` never enters the generation batch. It waits
here, and each turn of the engine's loop runs one forward pass over as many
waiting prompts as fit a token budget, so a burst of embeddings delays the
running streams by one bounded pass per step, as a long prompt's prefill
chunks do. A prompt longer than the budget is embedded alone, one chunk of the
budget per turn, through a KV cache: no pass is ever larger than the budget.

The embedding is what llama.cpp's ``--embeddings`` and vLLM's pooling runner
give for a decoder model: the final hidden states (after the last norm),
mean-pooled over the prompt's tokens and L2-normalised. Prompts are padded on
the right: under the causal mask no real token attends to padding, so a
prompt's vector does not depend on the batch it ran in (up to floating-point
rounding in differently shaped matmuls).

Runs on the engine thread (no anyio).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from actors.generation.faults import is_allocation_failure
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
from runtime.errors import describe_failure

log = logging.getLogger("troupe.engine")

PAD_TOKEN = 0
"""Fills the short prompts of a batch; never attended to by a real token."""


@dataclass
class _Chunked:
    """A prompt longer than the budget, embedded one chunk per engine turn."""

    request: Generate
    cache: list[Any]
    done: int = 0
    total: Any = field(default=None)
    """The sum of the hidden states so far (an MLX vector)."""


class EmbeddingQueue:
    """The embedding requests waiting for the engine, run in token-bounded batches."""

    def __init__(self, loaded: ModelLike, token_budget: int) -> None:
        self._loaded = loaded
        self._budget = max(1, token_budget)
        self._waiting: deque[Generate] = deque()
        self._running: list[Generate] = []
        """The batch of the pass under way: ended by the engine if the pass fails."""
        self._chunked: _Chunked | None = None
        self._vocab = vocab_size(loaded)
        self.pooled_tokens = 0
        """Prompt tokens embedded so far."""

    def __len__(self) -> int:
        return len(self._waiting) + len(self._running) + (self._chunked is not None)

    def add(self, request: Generate) -> Failed | None:
        """Queue ``request``, or the failure that says why it cannot be embedded."""
        problem = self._problem(request)
        if problem is None:
            self._waiting.append(request)
        return problem

    def cancel(self, request_id: str) -> Finished | None:
        """The end of a waiting request cancelled now (``None``: not waiting here)."""
        if self._chunked is not None and self._chunked.request.request_id == request_id:
            request, self._chunked = self._chunked.request, None
            return never_started(request)
        for request in self._waiting:
            if request.request_id == request_id:
                self._waiting.remove(request)
                return never_started(request)
        return None

    def drain(self) -> list[Generate]:
        """Every request not answered yet, removed (the engine is ending or recovering)."""
        drained = [*self._in_pass(), *self._waiting]
        self._waiting.clear()
        return drained

    def fail_pass(self, kind: FailureKind, detail: str, retryable: bool) -> list[StreamEvent]:
        """End the requests of a pass that failed; those waiting are left alone."""
        return [
            Failed(request_id=request.request_id, kind=kind, retryable=retryable, detail=detail)
            for request in self._in_pass()
        ]

    def _in_pass(self) -> list[Generate]:
        """The requests of the pass under way (a batch, or a long prompt), removed."""
        requests = list(self._running)
        if self._chunked is not None:
            requests.append(self._chunked.request)
        self._running, self._chunked = [], None
        return requests

    def step(self) -> list[StreamEvent]:
        """One pass: the next chunk of a long prompt, or the oldest prompts that fit the budget."""
        if self._chunked is None and self._waiting and len(self._waiting[0].prompt) > self._budget:
            request = self._waiting.popleft()
            if request.deadline is not None and time.time() >= request.deadline:
                return [expired(request)]
            self._chunked = _Chunked(request, make_prompt_cache(self._loaded.model))
        if self._chunked is not None:
            return self._advance_chunked(self._chunked)
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

    def step_guarded(self) -> list[StreamEvent]:
        """:meth:`step`; if the pass fails, only its own requests fail.

        An allocation failure frees MLX's cache and is worth a retry; anything
        else is this input's failure (a 500), never a reason to end the
        streams the engine runs beside it.
        """
        try:
            return self.step()
        except Exception as exc:
            if is_allocation_failure(exc):
                mx.clear_cache()
                return self.fail_pass(FailureKind.OUT_OF_MEMORY, "out of memory; retry later", True)
            log.error("an embedding pass failed: %s", describe_failure(exc))
            return self.fail_pass(
                FailureKind.ENGINE_CRASHED, "the engine could not embed this input", False
            )

    def _advance_chunked(self, chunked: _Chunked) -> list[StreamEvent]:
        prompt = chunked.request.prompt
        chunk = prompt[chunked.done : chunked.done + self._budget]
        hidden = self._loaded.model.model(mx.array([chunk]), cache=chunked.cache)
        part = hidden.astype(mx.float32).sum(axis=1)[0]
        chunked.total = part if chunked.total is None else chunked.total + part
        mx.eval(chunked.total)
        chunked.done += len(chunk)
        if chunked.done < len(prompt):
            return []
        self._chunked = None
        self.pooled_tokens += len(prompt)
        vector = _normalised(chunked.total[None, :] / len(prompt))[0]
        return [_finished(chunked.request, vector)]

    def _fits(self, batch: list[Generate], request: Generate) -> bool:
        """Whether ``request`` (no longer than the budget) joins ``batch`` within it."""
        if len(request.prompt) > self._budget:
            return False  # a long prompt is embedded alone, in chunks
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
    return _normalised(mean)


def _normalised(vectors: Any) -> list[list[float]]:
    """Each row of ``vectors`` scaled to unit length, as lists."""
    norm = mx.maximum(mx.sqrt((vectors * vectors).sum(axis=1, keepdims=True)), 1e-12)
    unit = vectors / norm
    mx.eval(unit)
    rows: list[list[float]] = unit.tolist()
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
