"""The MLX engine: continuous batching on one dedicated thread.

This module never imports anyio: it is plain threads and MLX, so it can be
driven from any event loop (or none). The generation actor feeds it commands
through thread-safe methods and receives events through the ``emit`` callback,
called on the engine thread with every event of one step.

Scheduling policy: admitted requests wait in a fair queue (per-tenant queues
served by weighted fair queuing, each ordered by ``priority`` then arrival:
:mod:`actors.generation.engine.fair_queue`) until the batch has both
a decode slot (fewer than ``completion_batch_size`` sequences) and a prefill
slot (the step's token budget leaves room for another prompt); one whose
deadline has passed by then is dropped before any prefill. In the batch
(mlx-lm's ``BatchGenerator``) each step first decodes one token for every
running sequence, then prefills a chunk of each prompt in prefill, the chunks
sized so that the step computes at most ``max_batched_tokens`` tokens
(:mod:`actors.generation.engine.token_budget`). A long prompt therefore
delays the running streams by a bounded chunk per step instead of stalling
them for its whole prefill.
Commands (new requests, cancellations) are applied between steps, so a
cancelled request leaves the batch before the next decode step. Embedding
requests never enter the batch: they wait in their own queue, pooled in one
bounded pass per turn of the loop (:mod:`actors.generation.engine.embedding_queue`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, generation_stream

from actors.generation.engine.embedding_queue import EmbeddingQueue
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.engine.fair_queue import FairQueue
from actors.generation.engine.faults import (
    FaultPlan,
    RecoveryTimer,
    die_natively,
    fire_token_faults,
    is_allocation_failure,
)
from actors.generation.engine.grammar_mask import GrammarBook
from actors.generation.engine.lockstep import Lockstep, StopEngine, Turns
from actors.generation.engine.ports import ModelLike, PrefixStore
from actors.generation.engine.requests import (
    ActiveRequest,
    Admission,
    admit,
    duplicate,
    expired,
    never_started,
    special_tokens,
    unpreparable,
    vocab_size,
)
from actors.generation.engine.shared_prefill import SharedPrefills
from actors.generation.engine.token_budget import TokenBudget, default_budget
from actors.generation.engine.token_logprobs import token_logprob
from actors.generation.protocol import (
    Cancel,
    Embed,
    EngineRequest,
    Failed,
    FailureKind,
    FinishReason,
    Generate,
    StreamEvent,
)
from runtime.errors import describe_failure

log = logging.getLogger("troupe.engine")

Emit = Callable[[list[StreamEvent]], None]


class Engine:
    """One engine thread running mlx-lm's BatchGenerator."""

    def __init__(
        self,
        loaded: ModelLike,
        emit: Emit,
        on_crash: Callable[[str], None],
        *,
        prefix_store: PrefixStore | None = None,
        config: EngineConfig | None = None,
        exclusive: threading.Lock | None = None,
        faults: FaultPlan | None = None,
        recovery: RecoveryTimer | None = None,
        lockstep: Lockstep | None = None,
    ) -> None:
        self._loaded = loaded
        self._emit = emit
        self._on_crash = on_crash
        self._prefix_store = prefix_store
        self._exclusive = exclusive or threading.Lock()
        self._special = special_tokens(loaded)
        self._grammars = GrammarBook(loaded, vocab_size(loaded))
        self.config = config or EngineConfig()
        self._commands = Turns(lockstep)
        self._lockstep = lockstep
        """Set when the model is split over ranks: every turn is shared (see :mod:`.lockstep`)."""
        self._now = time.time()
        """The clock deadlines are checked against this turn (the leader's, when split)."""
        self._requests: dict[int, ActiveRequest] = {}
        self._prefill_left: dict[int, int] = {}
        """Prompt tokens each request in prefill has still to compute, by uid (mirrors the
        batch generator, which advances each by the step's chunk)."""
        self._waiting = FairQueue()
        self._shared = SharedPrefills(loaded.model)
        self._budget = TokenBudget(
            default_budget(self.config.completion_batch_size)
            if self.config.max_batched_tokens is None
            else self.config.max_batched_tokens,
            self.config.prefill_batch_size,
            self.config.prefill_step_size,
        )
        self._embeddings = EmbeddingQueue(
            loaded, self.config.prefill_step_size * self.config.prefill_batch_size
        )
        self._by_id: dict[str, int] = {}
        self.faults = faults or FaultPlan()
        self._recovery = recovery or RecoveryTimer()
        self._thread = threading.Thread(target=self._run, name="troupe-engine", daemon=True)
        # mlx-lm's BatchGenerator is untyped; the engine is its only user.
        self._generator: Any = None
        self.steps = 0
        self._prompt_tokens = 0
        self.generated_tokens = 0
        self.cached_tokens = 0

    # -- thread-safe API ---------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def submit(self, request: EngineRequest) -> None:
        """Queue a request; it joins the batch before the next step."""
        self._commands.put(request)

    def cancel(self, request_id: str) -> None:
        """Remove a request before the next decode step (unknown ids are ignored)."""
        self._commands.put(Cancel(request_id=request_id))

    def stop(self) -> None:
        """Ask the thread to finish; in-flight requests are failed as shutting down."""
        self._commands.put(StopEngine())

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; ``True`` once it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens taken in: generation requests' and embedded inputs'."""
        return self._prompt_tokens + self._embeddings.pooled_tokens

    def counts(self) -> tuple[int, int]:
        """(running, waiting): decoding sequences, and those queued or in prefill."""
        requests = list(self._requests.values())
        running = sum(1 for r in requests if r.completion_tokens > 0)
        waiting = len(self._waiting) + self._shared.waiting() + len(self._embeddings)
        return running, len(requests) - running + waiting

    # -- the engine thread -------------------------------------------------------

    def _run(self) -> None:
        # One engine per model at a time: an engine abandoned by a stop that ran
        # past its timeout finishes its step before its successor starts. The
        # batch generator evaluates its next step ahead on its own stream; a
        # split engine's collectives must run in one order on every rank.
        split = mx.stream(generation_stream) if self._lockstep else contextlib.nullcontext()
        with self._exclusive, split:
            self._serve()

    def _serve(self) -> None:
        self.faults.reset_countdowns()
        try:
            if self._lockstep is not None:
                self._lockstep.seed_alike()
            self._generator = self._new_generator()
            while self._apply_commands(block=self._idle()):
                self._fill_batch()
                self._prefill_shared()
                if self._embeddings:  # one pooled pass of waiting embeddings
                    self._emit_any(self._embed())
                if self._requests:
                    self._step_guarded()
            self._fail_all(FailureKind.SHUTTING_DOWN, "the server is shutting down", True)
        except BaseException as exc:
            self._recovery.crashed()
            reason = describe_failure(exc)
            log.error("engine crashed: %s", reason)
            # First: an engine process ends here, leaving its requests to the
            # parent, which resumes them; an engine thread fails them below.
            self._on_crash(reason)
            self._fail_all(FailureKind.ENGINE_CRASHED, "the engine restarted; retry", True)
        finally:
            if self._generator is not None:
                self._generator.close()

    def _embed(self) -> list[StreamEvent]:
        # A split engine cannot fail a pass on one rank alone: the group restarts.
        split = self._lockstep is not None
        return self._embeddings.step() if split else self._embeddings.step_guarded()

    def _idle(self) -> bool:
        return not (self._requests or self._waiting or self._shared or self._embeddings)

    def _emit_any(self, events: list[StreamEvent]) -> None:
        if events:
            self._emit(events)

    def _load(self) -> tuple[int, list[int]]:
        """(sequences decoding, prompt tokens left of each prompt in prefill)."""
        remaining = list(self._prefill_left.values())
        if self._shared:
            remaining.append(self._shared.remaining())
        return len(self._requests) - len(self._prefill_left), remaining

    def _prefill_shared(self) -> None:
        """One chunk of a shared prompt; its choices enter the batch once it is done."""
        for request, group in self._shared.step(self._budget.chunk(*self._load())):
            if request.deadline is not None and self._now >= request.deadline:
                self._emit([expired(request)])
            else:
                self._admit(request, store=group)

    def _new_generator(self) -> Any:
        eos = [[token] for token in sorted(self._loaded.eos_token_ids)]
        return BatchGenerator(
            self._loaded.model,
            stop_tokens=eos,
            completion_batch_size=self.config.completion_batch_size,
            prefill_batch_size=self.config.prefill_batch_size,
            prefill_step_size=self.config.prefill_step_size,
        )

    def _apply_commands(self, *, block: bool) -> bool:
        """Apply this turn's commands; ``False`` once asked to stop."""
        turn = self._commands.next(block)
        self._now = turn.now
        for command in turn.commands:
            match command:
                case StopEngine():
                    return False
                case Cancel(request_id=request_id):
                    self._cancel(request_id)
                case Embed():
                    refused = self._embeddings.add(command)
                    self._emit_any([] if refused is None else [refused])
                case Generate():
                    self._waiting.push(command)
        return True

    def _fill_batch(self) -> None:
        """Move waiting requests into the batch while there is room.

        Room means a decode slot and a prefill slot: a request handed to the
        batch generator early would wait in its own queue, where no deadline
        is checked.
        """
        while (
            (request := self._waiting.peek()) is not None
            and len(self._requests) < self.config.completion_batch_size
            and self._budget.admits(*self._load(), len(request.prompt))
        ):
            self._waiting.pop()
            if request.deadline is not None and self._now >= request.deadline:
                self._emit([expired(request)])
            elif not self._shared.hold(request):
                self._admit(request)

    def _admit(self, request: Generate, store: PrefixStore | None = None) -> None:
        """Put ``request`` in the batch (``store``: its prefix source, if not the cache)."""
        if request.request_id in self._by_id:
            self._emit([duplicate(request)])
            return
        try:
            admission = admit(
                request, self._loaded, store or self._prefix_store, self._special, self._grammars
            )
        except Exception as exc:
            if is_allocation_failure(exc):
                raise  # the engine's own recovery: caches cleared, requests in flight failed
            # Preparing one request (its sampler, its logits processors) touches
            # nothing shared: a bug there fails that request, not every stream.
            log.error("could not prepare a request: %s", describe_failure(exc))
            admission = unpreparable(request)
        if isinstance(admission, Failed):
            self._emit([admission])
            return
        assert self._generator is not None
        uid = self._insert(admission)
        self._requests[uid] = admission.request
        if len(admission.remaining) > 1:  # the last token is computed as the first decode
            self._prefill_left[uid] = len(admission.remaining) - 1
        self._by_id[request.request_id] = uid
        self._prompt_tokens += len(request.prompt)
        self.cached_tokens += admission.request.cached_tokens

    def _insert(self, admission: Admission) -> int:
        assert self._generator is not None
        caches = None if admission.cache is None else [admission.cache]
        uids: list[int] = self._generator.insert(
            [admission.remaining],
            max_tokens=[admission.max_tokens],
            caches=caches,
            all_tokens=[admission.cached_prefix],
            samplers=[admission.sampler],
            logits_processors=[admission.processors],
        )
        return uids[0]

    def _cancel(self, request_id: str) -> None:
        uid = self._by_id.pop(request_id, None)
        if uid is None:
            self._cancel_waiting(request_id)
            return
        assert self._generator is not None
        self._generator.remove([uid])
        request = self._requests.pop(uid)
        self._prefill_left.pop(uid, None)
        self._emit([request.finish(FinishReason.CANCELLED)])

    def _cancel_waiting(self, request_id: str) -> None:
        """End a request that has not entered the batch: held, embedding, or queued."""
        held = self._shared.cancel(request_id)
        ended = self._embeddings.cancel(request_id) if held is None else never_started(held)
        if ended is None:
            queued = self._waiting.remove(request_id)
            ended = None if queued is None else never_started(queued)
        if ended is not None:
            self._emit([ended])

    def _step_guarded(self) -> None:
        try:
            self._step()
        except Exception as exc:
            if not is_allocation_failure(exc) or self._lockstep is not None:
                raise  # a split engine cannot recover on one rank alone: the group restarts
            self._recover_from_allocation_failure(exc)

    def _step(self) -> None:
        assert self._generator is not None
        if self.faults.poisons(self._by_id):
            die_natively()
        # The generator reads its chunk size at each step: the budget's share now.
        chunk = self._generator.prefill_step_size = self._budget.chunk(*self._load())
        _, responses = self._generator.next()
        self._advance_prefills(chunk)
        self.steps += 1
        events: list[StreamEvent] = []
        for response in responses:
            request = self._requests.get(response.uid)
            if request is None:
                continue
            self.generated_tokens += 1
            fire_token_faults(self.faults)
            events.extend(self._advance(response, request))
        if events:
            self._recovery.token_served()
            self._emit(events)

    def _advance_prefills(self, chunk: int) -> None:
        """Each prompt in prefill computed up to ``chunk`` more of its tokens this step."""
        for uid, left in list(self._prefill_left.items()):
            if left <= chunk or uid not in self._requests:
                del self._prefill_left[uid]
            else:
                self._prefill_left[uid] = left - chunk

    def _advance(self, response: Any, request: ActiveRequest) -> list[StreamEvent]:
        token = int(response.token)
        logprob = None
        if request.logprobs is not None and response.finish_reason != "stop":
            logprob = token_logprob(response.logprobs, token, request.logprobs)
        events = request.on_token(token, response.finish_reason, logprob)
        if not request.done:
            return events
        uid = self._by_id.pop(request.request_id)
        del self._requests[uid]
        self._prefill_left.pop(uid, None)
        cache, tokens = response.prompt_cache, response.all_tokens
        if response.finish_reason is None:  # a stop string: the batch still holds it
            assert self._generator is not None
            cache, tokens = self._generator.remove([uid], return_prompt_caches=True)[uid]
        self._offer_to_cache(tokens, cache, request.cache_namespace)
        return events

    def _offer_to_cache(
        self, tokens: list[int] | None, cache: list[Any] | None, namespace: str
    ) -> None:
        if self._prefix_store is not None and tokens and cache is not None:
            self._prefix_store.insert(list(tokens), cache, namespace)

    def _recover_from_allocation_failure(self, exc: BaseException) -> None:
        """Free what can be freed and fail only the requests in flight.

        Requests still waiting hold no MLX memory and took no part in the
        failed step: they stay queued and enter the fresh batch.
        """
        log.warning("engine: allocation failure (%s); clearing caches", describe_failure(exc))
        mx.clear_cache()
        if self._prefix_store is not None:
            self._prefix_store.clear()
        self._fail_in_flight(FailureKind.OUT_OF_MEMORY, "out of memory; retry later", True)
        self._waiting.push_front(self._shared.drain())  # their prefill starts over
        if self._generator is not None:
            self._generator.close()
        self._generator = self._new_generator()

    def _fail_in_flight(self, kind: FailureKind, detail: str, retryable: bool) -> None:
        """Fail the requests in the batch; the waiting ones are left alone."""
        events: list[StreamEvent] = [
            request.fail(kind, detail, retryable) for request in self._requests.values()
        ]
        self._requests.clear()
        self._prefill_left.clear()
        self._by_id.clear()
        self._emit_any(events)

    def _fail_all(self, kind: FailureKind, detail: str, retryable: bool) -> None:
        """Fail the requests in the batch and the waiting ones (the engine is ending)."""
        self._fail_in_flight(kind, detail, retryable)
        waiting: list[EngineRequest] = [
            *self._waiting.drain(),
            *self._shared.drain(),
            *self._embeddings.drain(),
        ]
        events: list[StreamEvent] = [
            Failed(request_id=r.request_id, kind=kind, retryable=retryable, detail=detail)
            for r in waiting
        ]
        self._emit_any(events)
