"""The generation actor of ``--engine thread``: owns the engine thread, bridges it to actors.

Requests arrive as :class:`Generate` messages; their events are posted to the
inbox the requester opened under the request id (:mod:`runtime.inbox`).
Each inbox is bounded by the request's own ``max_tokens`` (plus
its terminal event), so the engine never waits for a slow reader and a reader
can pin no more than it asked for.

If the engine thread dies, it first fails every request it held with a
retryable ``engine_crashed`` event; the actor then crashes on purpose so that
its supervisor restarts it with a fresh engine, reusing the weights kept by
the :class:`~actors.generation.inprocess.host.ModelHost`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.embedding_queue import embedding_size
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.engine.faults import FaultPlan, RecoveryTimer
from actors.generation.engine.ports import ModelLike, PrefixStore
from actors.generation.engine.requests import vocab_size
from actors.generation.inprocess.host import ModelHost
from actors.generation.protocol import (
    Accepted,
    Cancel,
    ClearEngineFaults,
    Embed,
    EngineFaultsCleared,
    EngineStats,
    Failed,
    FailureKind,
    Finished,
    Generate,
    GetEngineStats,
    InjectEngineFault,
    StreamEvent,
)
from actors.intake.protocol import ReportMemory
from actors.model.weights import kv_bytes_per_token, weight_bytes
from runtime import Actor, DeliveryError, ExitKind, Message, TroupeError

INTAKE = "intake"
MEMORY_REPORT_INTERVAL = 1.0
"""Seconds between two looks at the prefix cache's size for intake."""

log = logging.getLogger("troupe.generation")


def _memory_figures(loaded: ModelLike) -> tuple[int, int]:
    """(weights' bytes, KV cache bytes per token): one token through a fresh cache."""
    return weight_bytes(loaded.model), kv_bytes_per_token(loaded.model)


@dataclass(frozen=True)
class _EngineDied:
    reason: str


class EngineCrashed(TroupeError):
    """The engine thread died; the actor crashes so that it is restarted."""


class ThreadedGeneration(Actor):
    """The generation actor with the engine on a thread of the server (``--engine thread``).

    Runs one engine per incarnation over weights that outlive it. With the
    engine in its own process (the default), the generation actor is
    :class:`~actors.generation.supervised.router.GenerationRouter` instead.
    """

    def __init__(
        self,
        host: ModelHost[Any],
        *,
        prefix_store: PrefixStore | None = None,
        config: EngineConfig | None = None,
        faults: FaultPlan | None = None,
        recovery: RecoveryTimer | None = None,
        cache_bytes: Callable[[], int] | None = None,
    ) -> None:
        """Create an incarnation.

        ``cache_bytes`` reads the prefix cache's size; given, this actor measures
        the model's memory figures and tells intake (memory-aware admission).
        """
        self._host = host
        self._cache_bytes = cache_bytes
        self._figures: tuple[int, int] | None = None
        self._memory: ReportMemory | None = None
        self._memory_at = 0.0
        # Both outlive this incarnation when the composition root shares them.
        self._faults = faults or FaultPlan()
        self._recovery = recovery or RecoveryTimer()
        self._prefix_store = prefix_store
        self._config = config or EngineConfig()
        self._engine: Engine | None = None
        self._loaded: ModelLike | None = None
        self._owned: set[str] = set()
        # The engine thread never waits for the event loop: it drops each step's
        # events here and rings the doorbell; a pump task delivers them
        # (blocking the engine on a loop round trip per step cost ~5% of
        # single-stream decode speed). Only the doorbell is waited on in a
        # worker thread, so an abandoned wait can never swallow events.
        self._outbox: queue.SimpleQueue[list[StreamEvent] | _EngineDied] = queue.SimpleQueue()
        self._doorbell = threading.Event()
        # The pump waits in a thread on every engine step: in anyio's shared
        # pool a burst of other blocking work could make it queue for one, and
        # every stream would stall. It has a thread of its own, and the weight
        # load and the engine's join have theirs.
        self._pump_thread = anyio.CapacityLimiter(1)
        self._lifecycle_thread = anyio.CapacityLimiter(1)

    async def on_start(self) -> None:
        """Load (or reuse) the weights off the event loop and start the engine thread."""
        loaded: ModelLike = await anyio.to_thread.run_sync(
            self._host.get, limiter=self._lifecycle_thread
        )
        self._loaded = loaded
        self._engine = Engine(
            loaded,
            self._post,
            lambda reason: self._post(_EngineDied(reason)),
            prefix_store=self._prefix_store,
            config=self._config,
            exclusive=self._host.engine_lock,
            faults=self._faults,
            recovery=self._recovery,
        )
        if self._cache_bytes is not None:
            self._figures = await anyio.to_thread.run_sync(
                _memory_figures, loaded, limiter=self._lifecycle_thread
            )
            self._report_memory(force=True)
        self._engine.start()
        self.ctx.start_soon(self._pump)

    async def handle(self, message: Message) -> Message | None:
        """Admit, cancel, report, or inject faults."""
        engine = self._require_engine()
        match message:
            case Generate(request_id=request_id) | Embed(request_id=request_id):
                if not self.ctx.inbox_open(request_id) or request_id in self._owned:
                    # Events are routed by id: a second request under a live id
                    # would receive the first one's events.
                    return Failed(
                        request_id=request_id,
                        kind=FailureKind.INVALID_REQUEST,
                        retryable=False,
                        detail="no result stream is open for this request id, or it is in use",
                    )
                self._owned.add(request_id)
                engine.submit(message)
                return Accepted(request_id=request_id)
            case Cancel(request_id=request_id):
                engine.cancel(request_id)
                return None
            case GetEngineStats():
                return self._stats(engine)
            case InjectEngineFault(kind=kind, after_tokens=after_tokens, times=times):
                self._faults.arm(kind, max(1, after_tokens), max(1, times))
                return None
            case ClearEngineFaults():
                return EngineFaultsCleared(pending=self._faults.clear())
        raise TypeError(f"generation actor got an unexpected {type(message).__name__}")

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Stop the engine thread; fail whatever it did not answer."""
        try:
            if self._engine is not None:
                self._engine.stop()
                await anyio.to_thread.run_sync(
                    self._engine.join, abandon_on_cancel=True, limiter=self._lifecycle_thread
                )
        finally:
            # Even if joining ran past the shutdown limit, every stream still
            # gets what the engine sent and then a terminal event.
            for item in self._drain_outbox():
                if isinstance(item, list):
                    self._deliver(item)
            self._doorbell.set()  # releases the pump's worker thread if it still waits
            for request_id in list(self._owned):
                self._terminate(
                    request_id,
                    Failed(
                        request_id=request_id,
                        kind=FailureKind.SHUTTING_DOWN,
                        retryable=True,
                        detail="the generation actor stopped",
                    ),
                )

    def _post(self, item: list[StreamEvent] | _EngineDied) -> None:
        """Engine thread: queue ``item`` and wake the pump."""
        self._outbox.put(item)
        self._doorbell.set()

    def _deliver(self, events: list[StreamEvent]) -> None:
        """Runs on the event loop: hand each event to its request's stream."""
        assert self._engine is not None
        for event in events:
            request_id = event.request_id
            if isinstance(event, Finished | Failed):
                self._terminate(request_id, event)
            elif not self.ctx.post(request_id, event):
                # The reader is gone (disconnected): free its batch slot.
                self._engine.cancel(request_id)

    def _terminate(self, request_id: str, event: StreamEvent) -> None:
        self._owned.discard(request_id)
        self.ctx.post(request_id, event)
        self.ctx.seal(request_id)

    async def _pump(self) -> None:
        """Deliver the engine's events on the event loop; crash if the engine died."""
        while True:
            await anyio.to_thread.run_sync(
                self._doorbell.wait, abandon_on_cancel=True, limiter=self._pump_thread
            )
            self._doorbell.clear()
            items = self._drain_outbox()
            # Every batch is delivered before a death is acted on: the engine
            # reports its death first and then fails its requests.
            for item in items:
                if isinstance(item, list):
                    self._deliver(item)
            for item in items:
                if isinstance(item, _EngineDied):
                    raise EngineCrashed(f"the engine thread died: {item.reason}")
            self._report_memory()

    def _report_memory(self, *, force: bool = False) -> None:
        """Tell intake the weights' and prefix cache's bytes when they change (at most 1/s)."""
        now = time.monotonic()
        if self._figures is None or self._cache_bytes is None:
            return
        if not force and now - self._memory_at < MEMORY_REPORT_INTERVAL:
            return
        self._memory_at = now
        weights, per_token = self._figures
        memory = ReportMemory(
            kv_bytes_per_token=per_token, model_bytes=weights + self._cache_bytes()
        )
        if memory != self._memory:
            with contextlib.suppress(DeliveryError, LookupError):
                self.ctx.lookup(INTAKE).tell_nowait(memory)
                self._memory = memory

    def _drain_outbox(self) -> list[list[StreamEvent] | _EngineDied]:
        items: list[list[StreamEvent] | _EngineDied] = []
        while True:
            try:
                items.append(self._outbox.get_nowait())
            except queue.Empty:
                return items

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine has not started")
        return self._engine

    def load(self) -> tuple[int, int] | None:
        """(running, waiting) of this incarnation's engine, read without a message.

        For the metrics, which must answer even while this actor's mailbox is
        stuck; ``None`` before the engine starts.
        """
        return None if self._engine is None else self._engine.counts()

    def _stats(self, engine: Engine) -> EngineStats:
        assert self._loaded is not None
        running, waiting = engine.counts()
        return EngineStats(
            model=str(getattr(self._loaded, "name", "model")),
            context_length=self._loaded.context_length,
            vocab_size=vocab_size(self._loaded),
            embedding_size=embedding_size(self._loaded),
            running=running,
            waiting=waiting,
            steps=engine.steps,
            prompt_tokens=engine.prompt_tokens,
            generated_tokens=engine.generated_tokens,
            cached_tokens=engine.cached_tokens,
            weights_loads=self._host.loads,
            faults_pending=self._faults.pending(),
            recovery_seconds=self._recovery.samples(),
        )
