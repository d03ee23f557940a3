"""The generation actor over an engine process: keeps every request across engine deaths.

Requests arrive as :class:`Generate` messages, as with the in-process engine,
and their events are posted to the inbox the requester opened. Here the engine runs
in a process owned by the ``engine`` actor; this actor outlives it and keeps,
for every request, what was delivered so far. When the process dies (any
signal, any exit, a hang), the requests it held are sent to the next one:

* a request that delivered nothing is simply **retried**;
* one that delivered tokens is **resumed**: the new engine prefills the prompt
  plus the delivered tokens and continues with the same sampling settings
  (seeded draws continue where they were), so the stream goes on where it
  stopped, nothing repeated and nothing lost.

A request in flight at two engine deaths in a row may be their cause. It is
then **quarantined**: quarantined requests go back one at a time, alone with
requests already proven harmless, while new ones wait; one that gets through a
step (a token, or its end) is cleared, and one whose run ends in another death
is failed alone as poison, so it cannot crash-loop the server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from actors.generation.engine.faults import FaultPlan, RecoveryTimer
from actors.generation.engine.process_protocol import ArmedFault, Heartbeat, Ready
from actors.generation.protocol import (
    Accepted,
    AwaitModel,
    Cancel,
    ClearEngineFaults,
    Embed,
    EngineExit,
    EngineFault,
    EngineFaultsCleared,
    EngineProcessInfo,
    EngineRequest,
    EngineStats,
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    Generate,
    GetEngineStats,
    InjectEngineFault,
    StreamEvent,
)
from actors.generation.supervised.link import (
    BootFaults,
    CancelOn,
    EngineBeat,
    EngineDown,
    EngineFaultFired,
    EngineLoadFailed,
    EngineOutputs,
    EngineUp,
    GetBootFaults,
    RelayFault,
    Submit,
)
from actors.generation.supervised.on_demand import Demand, ModelPeers
from actors.generation.supervised.reports import RouterReports
from actors.generation.supervised.tracking import EngineTotals, TrackedRequest
from actors.kvcache.protocol import CacheStats
from runtime.actor import Actor, ActorRef
from runtime.errors import DeliveryError
from runtime.messages import Message
from runtime.node import ExitKind

log = logging.getLogger("troupe.generation")

SUSPECT_AFTER = 2
"""Engine deaths in a row a request may be in flight for before it is quarantined."""


class GenerationRouter(Actor):
    """The generation actor with the engine in its own process (the default).

    Keeps requests across engine processes; the engine actor runs them. With
    ``--engine thread`` the generation actor is
    :class:`~actors.generation.inprocess.actor.ThreadedGeneration` instead.
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        recovery: RecoveryTimer | None = None,
        peers: ModelPeers | None = None,
    ) -> None:
        self._faults = faults or FaultPlan()
        self._recovery = recovery or RecoveryTimer()
        self._tracked: dict[str, TrackedRequest] = {}
        self._engine: int | None = None
        self._ready: Ready | None = None
        self._up_at: float | None = None
        self._beat: Heartbeat | None = None
        self._beat_at: float | None = None
        self._last_exit: EngineExit | None = None
        self._solo: str | None = None
        self._totals = EngineTotals()
        self._demand = Demand(peers or ModelPeers())
        self._reports = RouterReports(self._demand.peers.model)

    async def handle(self, message: Message) -> Message | None:  # noqa: PLR0911, PLR0912 - one case per message
        """Admit and cancel requests; follow the engine process; report; inject faults."""
        match message:
            case Generate() | Embed():
                return self._admit(message)
            case AwaitModel():
                return self._await_model()
            case EngineLoadFailed():
                self._load_failed()
            case Cancel(request_id=request_id):
                self._cancel(request_id)
            case EngineOutputs(pid=pid, events=events, cache=cache) if pid == self._engine:
                if cache is not None:
                    self._report(cache)  # first: a client with its answer finds it counted
                self._deliver(events)
            case EngineBeat(pid=pid, beat=beat) if pid == self._engine:
                self._beat, self._beat_at = beat, time.monotonic()
                if beat.cache is not None:
                    self._report(beat.cache)
            case EngineUp(pid=pid, ready=ready):
                self._engine_up(pid, ready)
            case EngineDown():
                self._engine_down(message)
            case EngineFaultFired(kind=kind):
                self._faults.consume(kind)
            case GetBootFaults():
                return self._boot_faults()
            case GetEngineStats():
                return self._stats()
            case InjectEngineFault():
                self._arm(message)
            case ClearEngineFaults():
                self._tell_engine(RelayFault(fault=None))
                return EngineFaultsCleared(pending=self._faults.clear())
            case EngineOutputs() | EngineBeat():
                pass  # from a process that has ended since
            case _:
                return await super().handle(message)
        return None

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Answer every request still here: the server is going away (or this actor is)."""
        for request_id, tracked in list(self._tracked.items()):
            self._terminate(
                request_id,
                Failed(
                    request_id=request_id,
                    kind=FailureKind.SHUTTING_DOWN,
                    retryable=True,
                    detail="the generation actor stopped",
                    tokens_sent=len(tracked.delivered),
                ),
            )

    # -- requests -------------------------------------------------------------------

    def _await_model(self) -> Message | None:
        """The model's figures now if an engine is up, else once one is (loading it)."""
        if self._engine is not None:
            return self._stats()
        if self._demand.retry_in() is not None:
            return self._demand.unavailable()
        self._demand.waiters.append(self.ctx.defer_reply())
        self._demand.want(self.ctx)
        return None

    def _load_failed(self) -> None:
        """Loading on demand failed: every request waiting for it ends, and every waiter."""
        for waiter in self._demand.failed():
            waiter.resolve(self._demand.unavailable())
        for request_id, tracked in list(self._tracked.items()):
            if tracked.engine is None:
                self._terminate(
                    request_id, self._demand.failure(request_id, len(tracked.delivered))
                )

    def _admit(self, request: EngineRequest) -> Message:
        request_id = request.request_id
        if not self.ctx.inbox_open(request_id) or request_id in self._tracked:
            # Events are routed by id: a second request under a live id would
            # receive the first one's events.
            return Failed(
                request_id=request_id,
                kind=FailureKind.INVALID_REQUEST,
                retryable=False,
                detail="no result stream is open for this request id, or it is in use",
            )
        if self._engine is None and self._demand.retry_in() is not None:
            failed = self._demand.failure(request_id, 0)  # the model failed to load lately
            self.ctx.post(request_id, failed)
            self.ctx.seal(request_id)
            return Accepted(request_id=request_id)
        self._tracked[request_id] = TrackedRequest(request)
        self._demand.activity(self.ctx, len(self._tracked))
        self._dispatch()
        return Accepted(request_id=request_id)

    def _cancel(self, request_id: str) -> None:
        tracked = self._tracked.get(request_id)
        if tracked is None:
            return
        tracked.cancelled = True
        if tracked.engine is not None:
            self._tell_engine(CancelOn(pid=tracked.engine, request_id=request_id))
        else:
            self._terminate(request_id, tracked.finished(FinishReason.CANCELLED))

    def _deliver(self, events: list[StreamEvent]) -> None:
        served = False
        for event in events:
            tracked = self._tracked.get(event.request_id)
            if tracked is None:
                continue
            if isinstance(event, Finished | Failed):
                self._terminate(event.request_id, event)
            else:
                served = True
                tracked.delivered.extend(event.token_ids)
                if not self.ctx.post(event.request_id, event):
                    self._cancel(event.request_id)  # the reader is gone
            if event.request_id == self._solo:
                self._clear_solo(tracked)
        if served:
            self._recovery.token_served()

    def _terminate(self, request_id: str, event: StreamEvent) -> None:
        self._tracked.pop(request_id, None)
        self._demand.activity(self.ctx, len(self._tracked))
        if request_id == self._solo:
            self._solo = None
            self._dispatch()
        self.ctx.post(request_id, event)
        self.ctx.seal(request_id)

    # -- the engine process -----------------------------------------------------------

    def _engine_up(self, pid: int, ready: Ready) -> None:
        self._engine, self._ready = pid, ready
        self._up_at, self._beat, self._beat_at = time.monotonic(), None, None
        self._totals.ups += 1
        self._report(ready.cache)
        stats = self._stats()
        for waiter in self._demand.up():
            waiter.resolve(stats)
        self._dispatch()

    def _report(self, cache: CacheStats) -> None:
        """Tell the metrics (they cannot read another process) and intake (memory pressure)."""
        self._reports.report(self.ctx, cache, self._load(), self._beat, self._ready)

    def _engine_down(self, down: EngineDown) -> None:
        pid = down.exit.pid
        self._last_exit = down.exit
        if pid == self._engine:
            self._engine = None
            self._fold_counters()
        if down.unloaded:
            self._requeue(pid)
            return
        if down.clean:
            return  # a shutdown: on_stop answers what is left
        self._recovery.crashed()
        culprit, self._solo = self._solo, None
        for request_id, tracked in list(self._tracked.items()):
            if tracked.engine != pid:
                continue
            tracked.engine = None
            if tracked.cancelled:
                self._terminate(request_id, tracked.finished(FinishReason.CANCELLED))
            elif request_id == culprit:
                self._totals.poisoned += 1
                log.error(
                    "request failed alone: the engine died each time it ran",
                    extra={"event": "request_poisoned", "request_id": request_id},
                )
                self._terminate(request_id, tracked.poisoned())
            else:
                tracked.deaths += 1

    def _requeue(self, pid: int) -> None:
        """The engine was unloaded: what reached it in the meantime waits for the next one."""
        self._demand.loaded = False
        if self._ready is not None:  # its weights and cache are gone: intake may book more
            self._reports.memory_now(self.ctx, self._ready, 0)
        for tracked in self._tracked.values():
            if tracked.engine == pid:
                tracked.engine = None
        self._dispatch()

    def _fold_counters(self) -> None:
        self._totals.fold(self._beat)
        self._beat = None

    def _dispatch(self) -> None:
        """Send waiting requests to the engine, quarantined ones one at a time."""
        pid = self._engine
        if pid is None and self._tracked:
            self._demand.want(self.ctx)
        if pid is None or self._solo is not None:
            return
        waiting = [t for t in self._tracked.values() if t.engine is None and not t.cancelled]
        suspects = [t for t in waiting if t.deaths >= SUSPECT_AFTER]
        if suspects:
            # Alone but for requests that already got through a step on this engine.
            solo = suspects[0]
            self._solo = solo.request.request_id
            log.warning(
                "request runs alone: it was in flight at two engine deaths",
                extra={"event": "request_quarantined", "request_id": self._solo},
            )
            self._submit(pid, solo)
            return
        for tracked in waiting:
            self._submit(pid, tracked)

    def _submit(self, pid: int, tracked: TrackedRequest) -> None:
        request = tracked.request
        if tracked.deaths:
            event = "request_resumed" if tracked.delivered else "request_retried"
            if tracked.delivered:
                self._totals.resumed += 1
            else:
                self._totals.retried += 1
            log.info(
                "%s on engine process %d",
                event.replace("_", " "),
                pid,
                extra={
                    "event": event,
                    "request_id": request.request_id,
                    "tokens_sent": len(tracked.delivered),
                },
            )
        if tracked.fully_delivered:  # only its end was lost
            self._terminate(request.request_id, tracked.finished(FinishReason.LENGTH))
            return
        tracked.engine = pid
        self._tell_engine(Submit(pid=pid, request=tracked.resubmission()))

    def _clear_solo(self, tracked: TrackedRequest) -> None:
        """The quarantined request got through a step: it is not the cause."""
        tracked.deaths = 0
        self._solo = None
        self._dispatch()

    def _tell_engine(self, message: Message) -> None:
        # A gone or restarting engine actor: its death is reported by EngineDown,
        # after which everything it held is sent again.
        with contextlib.suppress(DeliveryError, LookupError):
            self._engine_ref().tell_nowait(message)

    def _engine_ref(self) -> ActorRef:
        return self.ctx.lookup(self._demand.peers.engine)

    # -- faults and figures ---------------------------------------------------------------

    def _arm(self, fault: InjectEngineFault) -> None:
        after, times = max(1, fault.after_tokens), max(1, fault.times)
        self._faults.arm(fault.kind, after, times, fault.request_id)
        if fault.kind is not EngineFault.EXIT_ON_LOAD:
            armed = ArmedFault(
                kind=fault.kind, after_tokens=after, times=times, request_id=fault.request_id
            )
            self._tell_engine(RelayFault(fault=armed))

    def _boot_faults(self) -> BootFaults:
        faults = [
            ArmedFault(kind=kind, after_tokens=after, times=left, request_id=target)
            for kind, after, left, target in self._faults.armed()
            if kind is not EngineFault.EXIT_ON_LOAD
        ]
        return BootFaults(
            faults=faults,
            exit_on_load=self._faults.consume(EngineFault.EXIT_ON_LOAD),
            load=self._demand.loaded or bool(self._tracked) or bool(self._demand.waiters),
        )

    def _load(self) -> tuple[int, int]:
        """(running, waiting) as this actor sees them, never stale.

        Running: on the engine with a token delivered; waiting: the rest
        (queued, prefilling, or between engines).
        """
        running = sum(1 for t in self._tracked.values() if t.engine is not None and t.delivered)
        return running, len(self._tracked) - running

    def _stats(self) -> EngineStats:
        ready, beat = self._ready, self._counters()
        running, waiting = self._load()
        now = time.monotonic()
        up = self._engine is not None
        return EngineStats(
            model=ready.model if ready else "model",
            context_length=ready.context_length if ready else 0,
            vocab_size=ready.vocab_size if ready else 0,
            embedding_size=ready.embedding_size if ready else 0,
            running=running,
            waiting=waiting,
            steps=beat.steps,
            prompt_tokens=beat.prompt_tokens,
            generated_tokens=beat.generated_tokens,
            cached_tokens=beat.cached_tokens,
            weights_loads=self._totals.ups,
            faults_pending=self._faults.pending(),
            recovery_seconds=self._recovery.samples(),
            process=EngineProcessInfo(
                pid=self._engine,
                uptime_seconds=now - self._up_at if up and self._up_at is not None else None,
                restarts=max(0, self._totals.ups - 1),
                heartbeat_age_seconds=now - self._beat_at if up and self._beat_at else None,
                steps=self._beat.steps if self._beat and up else 0,
                last_exit=self._last_exit,
                retried=self._totals.retried,
                resumed=self._totals.resumed,
                poisoned=self._totals.poisoned,
                suspects=sum(1 for t in self._tracked.values() if t.deaths),
            ),
        )

    def _counters(self) -> Heartbeat:
        return self._totals.with_live(self._beat)

    def tracked(self) -> Iterator[str]:
        """Ids of the requests held now (for tests)."""
        return iter(list(self._tracked))
