"""Embeddings inside the engine: inputs pooled in batches between decode steps.

An :class:`~actors.generation.protocol.Embed` request never enters the
generation batch. Its inputs wait here, and each turn of the engine's loop runs
one forward pass over as many waiting inputs as fit a token budget, whatever
request they came from, so a burst of embeddings delays the running streams by
one bounded pass per step, as a long prompt's prefill chunks do. An input
longer than the budget is embedded alone, one chunk of the budget per turn,
through a KV cache: no pass is ever larger than the budget. A request is
answered once its last input is done, with every vector in one event.

The embedding is what llama.cpp's ``--embeddings`` and vLLM's pooling runner
give for a decoder model: the final hidden states (after the last norm),
mean-pooled over the input's tokens and L2-normalised. Inputs are padded on
the right: under the causal mask no real token attends to padding, so an
input's vector does not depend on the batch it ran in (up to floating-point
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
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from actors.generation.engine.faults import is_allocation_failure
from actors.generation.engine.ports import ModelLike
from actors.generation.engine.requests import expired, never_started, vocab_size
from actors.generation.protocol import (
    Embed,
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    StreamEvent,
)
from runtime.errors import describe_failure

log = logging.getLogger("troupe.engine")

PAD_TOKEN = 0
"""Fills the short inputs of a batch; never attended to by a real token."""


@dataclass
class _Pending:
    """A request whose inputs are not all embedded yet."""

    request: Embed
    vectors: list[bytes | None]
    started: bool = False
    """One of its inputs has entered a pass: its deadline no longer drops it."""

    @property
    def done(self) -> bool:
        return all(vector is not None for vector in self.vectors)


@dataclass(frozen=True)
class _Input:
    """One input of a pending request."""

    pending: _Pending
    index: int

    @property
    def tokens(self) -> list[int]:
        return self.pending.request.inputs[self.index]


@dataclass
class _Chunked:
    """An input longer than the budget, embedded one chunk per engine turn."""

    item: _Input
    cache: list[Any]
    done: int = 0
    total: Any = field(default=None)
    """The sum of the hidden states so far (an MLX vector)."""


class EmbeddingQueue:
    """The inputs waiting to be embedded, run in token-bounded batches."""

    def __init__(self, loaded: ModelLike, token_budget: int) -> None:
        self._loaded = loaded
        self._budget = max(1, token_budget)
        self._pending: dict[str, _Pending] = {}
        self._waiting: deque[_Input] = deque()
        self._running: list[_Input] = []
        """The inputs of the pass under way: their requests fail if the pass does."""
        self._chunked: _Chunked | None = None
        self._vocab = vocab_size(loaded)
        self.pooled_tokens = 0
        """Input tokens embedded so far."""

    def __len__(self) -> int:
        """Requests not answered yet."""
        return len(self._pending)

    def add(self, request: Embed) -> Failed | None:
        """Queue every input of ``request``, or the failure that says why it cannot be embedded."""
        problem = self._problem(request)
        if problem is not None:
            return problem
        pending = _Pending(request, [None] * len(request.inputs))
        self._pending[request.request_id] = pending
        self._waiting.extend(_Input(pending, index) for index in range(len(request.inputs)))
        return None

    def cancel(self, request_id: str) -> Finished | None:
        """The end of a request cancelled now (``None``: not here)."""
        pending = self._pending.get(request_id)
        if pending is None:
            return None
        self._forget(pending)
        return never_started(pending.request)

    def drain(self) -> list[Embed]:
        """Every request not answered yet, removed (the engine is ending or recovering)."""
        drained = [pending.request for pending in self._pending.values()]
        self._pending.clear()
        self._waiting.clear()
        self._running, self._chunked = [], None
        return drained

    def fail_pass(self, kind: FailureKind, detail: str, retryable: bool) -> list[StreamEvent]:
        """End the requests of a pass that failed; those not in it are left alone."""
        in_pass = [item.pending for item in self._running]
        if self._chunked is not None:
            in_pass.append(self._chunked.item.pending)
        self._running, self._chunked = [], None
        failed: dict[str, StreamEvent] = {}
        for pending in in_pass:
            if pending.request.request_id in self._pending:
                self._forget(pending)
                failed[pending.request.request_id] = Failed(
                    request_id=pending.request.request_id,
                    kind=kind,
                    retryable=retryable,
                    detail=detail,
                )
        return list(failed.values())

    def _forget(self, pending: _Pending) -> None:
        """Remove ``pending`` and every input of it still waiting or chunked."""
        del self._pending[pending.request.request_id]
        self._waiting = deque(item for item in self._waiting if item.pending is not pending)
        if self._chunked is not None and self._chunked.item.pending is pending:
            self._chunked = None

    def step(self) -> list[StreamEvent]:
        """One pass: the next chunk of a long input, or the oldest inputs that fit the budget."""
        events = self._drop_expired()
        if self._chunked is None and self._waiting and len(self._waiting[0].tokens) > self._budget:
            item = self._waiting.popleft()
            item.pending.started = True
            self._chunked = _Chunked(item, make_prompt_cache(self._loaded.model))
        if self._chunked is not None:
            return events + self._advance_chunked(self._chunked)
        batch: list[_Input] = []
        while self._waiting and self._fits(batch, self._waiting[0]):
            batch.append(self._waiting.popleft())
        if not batch:
            return events
        for item in batch:
            item.pending.started = True
        self._running = batch
        vectors = pooled(self._loaded.model, [item.tokens for item in batch])
        self._running = []
        for item, vector in zip(batch, vectors, strict=True):
            events.extend(self._embedded(item, vector))
        return events

    def _drop_expired(self) -> list[StreamEvent]:
        """End the requests whose deadline passed before any input of theirs started."""
        now = time.time()
        late = [
            pending
            for pending in self._pending.values()
            if not pending.started
            and pending.request.deadline is not None
            and now >= pending.request.deadline
        ]
        for pending in late:
            self._forget(pending)
        return [expired(pending.request) for pending in late]

    def _embedded(self, item: _Input, vector: bytes) -> list[StreamEvent]:
        """Record ``item``'s vector; its request's end once it was the last."""
        pending = item.pending
        pending.vectors[item.index] = vector
        self.pooled_tokens += len(item.tokens)
        if not pending.done or self._pending.get(pending.request.request_id) is not pending:
            return []
        del self._pending[pending.request.request_id]
        return [_finished(pending)]

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
        tokens = chunked.item.tokens
        chunk = tokens[chunked.done : chunked.done + self._budget]
        hidden = self._loaded.model.model(mx.array([chunk]), cache=chunked.cache)
        part = hidden.astype(mx.float32).sum(axis=1)[0]
        chunked.total = part if chunked.total is None else chunked.total + part
        mx.eval(chunked.total)
        chunked.done += len(chunk)
        if chunked.done < len(tokens):
            return []
        self._chunked = None
        return self._embedded(chunked.item, _normalised(chunked.total[None, :] / len(tokens))[0])

    def _fits(self, batch: list[_Input], item: _Input) -> bool:
        """Whether ``item`` (no longer than the budget) joins ``batch`` within it."""
        if len(item.tokens) > self._budget:
            return False  # a long input is embedded alone, in chunks
        if not batch:
            return True
        longest = max(len(item.tokens), *(len(other.tokens) for other in batch))
        return longest * (len(batch) + 1) <= self._budget

    def _problem(self, request: Embed) -> Failed | None:
        def failed(kind: FailureKind, detail: str) -> Failed:
            return Failed(request_id=request.request_id, kind=kind, retryable=False, detail=detail)

        if request.request_id in self._pending:
            return failed(FailureKind.INVALID_REQUEST, "a request with this id is already running")
        if not request.inputs or not all(request.inputs):
            return failed(FailureKind.INVALID_REQUEST, "the input is empty")
        if any(not 0 <= token < self._vocab for tokens in request.inputs for token in tokens):
            return failed(FailureKind.INVALID_REQUEST, f"token ids must be below {self._vocab}")
        window = self._loaded.context_length
        longest = max(len(tokens) for tokens in request.inputs)
        if longest > window:
            return failed(
                FailureKind.PROMPT_TOO_LONG,
                f"the input has {longest} tokens but the context window is {window} tokens",
            )
        if not callable(getattr(self._loaded.model, "model", None)):
            return failed(FailureKind.INVALID_REQUEST, "this model cannot give embeddings")
        return None


def embedding_size(loaded: ModelLike) -> int:
    """Dimensions of the model's embeddings: its hidden size (0 where unknown)."""
    size = getattr(getattr(loaded.model, "args", None), "hidden_size", 0)
    return size if isinstance(size, int) else 0


def pooled(model: Any, prompts: list[list[int]]) -> list[bytes]:
    """The mean-pooled, L2-normalised final hidden states of each prompt (float32 bytes)."""
    lengths = [len(prompt) for prompt in prompts]
    longest = max(lengths)
    padded = mx.array([prompt + [PAD_TOKEN] * (longest - len(prompt)) for prompt in prompts])
    # mlx-lm's models keep the transformer (embeddings, layers, final norm) as
    # ``model.model``: its output is the hidden states the LM head would read.
    hidden = model.model(padded).astype(mx.float32)
    mask = (mx.arange(longest)[None, :] < mx.array(lengths)[:, None]).astype(mx.float32)
    mean = (hidden * mask[:, :, None]).sum(axis=1) / mx.array(lengths, dtype=mx.float32)[:, None]
    return _normalised(mean)


def _normalised(vectors: Any) -> list[bytes]:
    """Each row of ``vectors`` scaled to unit length, as little-endian float32 bytes."""
    norm = mx.maximum(mx.sqrt((vectors * vectors).sum(axis=1, keepdims=True)), 1e-12)
    unit = (vectors / norm).astype(mx.float32)
    rows = np.asarray(unit, dtype="<f4")
    return [row.tobytes() for row in rows]


def _finished(pending: _Pending) -> Finished:
    request = pending.request
    return Finished(
        request_id=request.request_id,
        reason=FinishReason.STOP,
        prompt_tokens=request.prompt_tokens,
        completion_tokens=0,
        queued_s=None if request.submitted_at is None else time.time() - request.submitted_at,
        embeddings=[vector for vector in pending.vectors if vector is not None],
    )
