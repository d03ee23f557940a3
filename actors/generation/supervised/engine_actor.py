"""The engine actor: owns one engine process per incarnation and watches it live.

It starts the process in ``on_start`` (ready once the model is loaded and the
engine steps), relays requests to it and its events back to the generation
actor, and crashes on purpose when the process dies or hangs, so that its
supervisor restarts it with the tree's intensity, period and backoff. The
generation actor, which outlives it, resumes the requests on the next one.

Liveness is judged on the generation loop itself: the process sends a
heartbeat with its step counter every ``heartbeat_interval``; no heartbeat for
``hang_timeout`` seconds (a stopped or wedged process), or no step for that
long while requests are waiting (a native deadlock in the loop), marks it
hung, and it is killed.

With several models (:mod:`actors.models`), an engine may start empty and load
on demand: the model keeper sends :class:`LoadModel` and :class:`UnloadModel`,
and a load that fails is reported (the engine stays empty, its requests fail
with a clear error) rather than crashing, so one bad model leaves the others
serving.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from actors.generation.engine.process_protocol import (
    ArmFault,
    Boot,
    CacheCall,
    CacheReply,
    DisarmFaults,
    FaultFired,
    Heartbeat,
    LoadFailed,
    LogLine,
    Outputs,
    Ready,
    Shutdown,
    ShutdownDone,
)
from actors.generation.protocol import Cancel, EngineExit, Failed, Finished
from actors.generation.supervised.engine_process import EngineProcess, Spawner
from actors.generation.supervised.engine_settings import (
    ENGINE_ACTOR,
    EnginePeers,
    EngineProcessSettings,
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
    RelayCache,
    RelayFault,
    Submit,
)
from actors.kvcache.relay import CacheUnavailable
from actors.models.protocol import (
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    UnloadDeclined,
    UnloadModel,
)
from runtime.actor import Actor
from runtime.context import DeferredReply
from runtime.errors import TroupeError
from runtime.messages import Message
from runtime.node import ExitKind

log = logging.getLogger("troupe.engine")


class EngineProcessDied(TroupeError):
    """The engine process ended or hung; the actor crashes so that it is restarted."""


class EngineStartFailed(TroupeError):
    """The engine process could not load the model."""


class EngineActor(Actor):
    """One engine process per incarnation."""

    def __init__(
        self,
        boot: Boot,
        settings: EngineProcessSettings | None = None,
        *,
        spawner: Spawner | None = None,
        peers: EnginePeers | None = None,
    ) -> None:
        self._boot = boot
        self._peers = peers or EnginePeers()
        self.settings = settings or EngineProcessSettings()
        # Shared by every incarnation: it keeps the next process started ahead.
        self._spawner = spawner or Spawner(spare=False)
        self._process: EngineProcess | None = None
        self._up = False
        self._pending: set[str] = set()
        self._calls: dict[int, DeferredReply] = {}
        self._call_ids = itertools.count()
        self._beat_at = time.monotonic()
        self._steps = -1
        self._progress_at = time.monotonic()
        self._hung: str | None = None
        self._tasks: list[anyio.CancelScope] = []
        self._ready_bytes = 0

    async def on_start(self) -> None:
        """Start the process and wait until it has loaded the model (unless it loads on demand)."""
        faults = await self.ctx.lookup(self._peers.generation).ask(
            GetBootFaults(), expect=BootFaults
        )
        if self._peers.keeper is None:
            await self._start(faults)
        elif faults.load or self._peers.preload:  # restarted while loaded, wanted, or preloaded
            await self._load(faults)

    async def _load(self, faults: BootFaults | None = None) -> None:
        """Load on demand: a failure is reported to the router and the keeper, not raised."""
        if faults is None:
            faults = await self.ctx.lookup(self._peers.generation).ask(
                GetBootFaults(), expect=BootFaults
            )
        try:
            await self._start(faults)
        except EngineStartFailed as exc:
            log.error(
                "model %s could not be loaded: %s",
                self._peers.model,
                exc,
                extra={"event": "model_load_failed", "model": self._peers.model},
            )
            self._process = None
            self._tell_keeper(ModelLoadFailed(model=self._peers.model, reason=str(exc)))
            await self.ctx.lookup(self._peers.generation).tell(EngineLoadFailed(reason=str(exc)))

    async def _start(self, faults: BootFaults) -> None:
        """Start a process and wait until it is ready; tell the router, and the keeper."""
        generation = self.ctx.lookup(self._peers.generation)
        boot = msgspec.structs.replace(
            self._boot, faults=faults.faults, exit_on_load=faults.exit_on_load
        )
        self._process = process = await self._spawner.take(boot)
        try:
            ready = await self._await_ready(process)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._ended(process, clean=False, started=False)
            raise
        self._up, self._hung, self._ready_bytes = True, None, ready.weights_bytes
        self._beat_at = self._progress_at = time.monotonic()
        await generation.tell(EngineUp(pid=process.pid, ready=ready))
        self._tell_keeper(ModelLoaded(model=self._peers.model, weights_bytes=ready.weights_bytes))
        log.info("engine process %d ready", process.pid)
        await self._spawner.prepare()  # the next one imports while this one serves
        self._attend(self._read, process)
        self._attend(self._watch)

    def _attend(self, task: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``task`` for as long as this process lives (an unload cancels it)."""
        scope = anyio.CancelScope()
        self._tasks.append(scope)

        async def attended() -> None:
            with scope:
                await task(*args)

        self.ctx.start_soon(attended)

    def _tell_keeper(self, message: Message) -> None:
        if self._peers.keeper is not None:
            with contextlib.suppress(TroupeError, LookupError):
                self.ctx.lookup(self._peers.keeper).tell_nowait(message)

    async def _unload(self, process: EngineProcess) -> None:
        """Stop the process on the keeper's word, unless requests are on it."""
        model = self._peers.model
        if self._pending:
            self._tell_keeper(UnloadDeclined(model=model))
            return
        for scope in self._tasks:
            scope.cancel()
        self._tasks.clear()
        await anyio.lowlevel.checkpoint()  # the reader lets go of the process's pipe
        await self._shut_down(process)
        self._process, self._up = None, False
        for reply in self._calls.values():
            reply.resolve(CacheUnavailable(reason="the model was unloaded"))
        self._calls.clear()
        await self._ended(process, clean=True, started=True, unloaded=True)
        self._tell_keeper(ModelUnloaded(model=model))
        log.info("model %s unloaded", model, extra={"event": "model_unloaded", "model": model})

    async def _await_ready(self, process: EngineProcess) -> Ready:
        with anyio.move_on_after(self.settings.load_timeout):
            while (message := await process.receive()) is not None:
                match message:
                    case Ready():
                        return message
                    case LoadFailed(reason=reason):
                        raise EngineStartFailed(reason)
                    case LogLine():
                        _relog(message)
            exit_info = await process.reap()
            raise EngineStartFailed(f"the engine process {exit_info.reason} while loading")
        process.kill()
        raise EngineStartFailed(
            f"the engine process did not load the model in {self.settings.load_timeout:g}s"
        )

    async def handle(self, message: Message) -> Message | None:
        """Relay requests, cancellations, faults and cache calls to the process."""
        process = self._process
        if process is None:
            return await self._handle_empty(message)
        match message:
            case LoadModel():
                self._tell_keeper(
                    ModelLoaded(model=self._peers.model, weights_bytes=self._ready_bytes)
                )
            case UnloadModel():
                await self._unload(process)
            case Submit(pid=pid, request=request) if pid == process.pid:
                if not self._pending:
                    self._progress_at = time.monotonic()  # the hang clock starts now
                self._pending.add(request.request_id)
                await self._send(process, request)
            case CancelOn(pid=pid, request_id=request_id) if pid == process.pid:
                await self._send(process, Cancel(request_id=request_id))
            case Submit() | CancelOn():
                pass  # meant for a process that is gone; its requests are resumed
            case RelayFault(fault=fault):
                await self._send(
                    process, DisarmFaults() if fault is None else ArmFault(fault=fault)
                )
            case RelayCache(request=request):
                call = next(self._call_ids)
                self._calls[call] = self.ctx.defer_reply()
                await self._send(process, CacheCall(call=call, request=request))
            case _:
                return await super().handle(message)
        return None

    async def _handle_empty(self, message: Message) -> Message | None:
        """Without a process: load on the keeper's word; nothing else can be done."""
        match message:
            case LoadModel():
                await self._load()
            case UnloadModel():
                self._tell_keeper(ModelUnloaded(model=self._peers.model))
            case RelayCache():
                return CacheUnavailable(reason="the model is not loaded")
            case Submit() | CancelOn() | RelayFault():
                pass  # the router resends what it holds once a process is up
            case _:
                return await super().handle(message)
        return None

    async def _send(self, process: EngineProcess, message: Message) -> None:
        # A gone process: the reader sees its end of file and crashes this incarnation.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await process.send(message)

    async def _read(self, process: EngineProcess) -> None:
        generation = self.ctx.lookup(self._peers.generation)
        pid = process.pid
        while (message := await process.receive()) is not None:
            match message:
                case Outputs(events=events, cache=cache):
                    for event in events:
                        if isinstance(event, Finished | Failed):
                            self._pending.discard(event.request_id)
                    await generation.tell(EngineOutputs(pid=pid, events=events, cache=cache))
                case Heartbeat():
                    self._on_beat(message)
                    await generation.tell(EngineBeat(pid=pid, beat=message))
                case CacheReply(call=call, answer=answer):
                    reply = self._calls.pop(call, None)
                    if reply is not None:
                        reply.resolve(answer)
                case FaultFired(kind=kind):
                    await generation.tell(EngineFaultFired(pid=pid, kind=kind))
                case LogLine():
                    _relog(message)
                case _:
                    pass
        ended = await process.reap()  # at once: end of file means it is exiting or gone
        raise EngineProcessDied(f"the engine process {pid} {ended.reason}")

    def _on_beat(self, beat: Heartbeat) -> None:
        now = time.monotonic()
        self._beat_at = now
        if beat.steps != self._steps:
            self._steps = beat.steps
            self._progress_at = now

    async def _watch(self) -> None:
        """Kill the process when it stops beating, or stops stepping with work waiting."""
        limit = self.settings.hang_timeout
        tick = min(self.settings.heartbeat_interval, limit / 4)
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            silent, still = now - self._beat_at, now - self._progress_at
            if silent > limit:
                self._hung = f"sent no heartbeat for {silent:.1f}s"
            elif self._pending and still > limit:
                self._hung = f"made no step for {still:.1f}s with {len(self._pending)} requests"
            if self._hung is not None:
                assert self._process is not None
                log.error("engine process %d hung: %s; killing it", self._process.pid, self._hung)
                self._process.kill()
                raise EngineProcessDied(f"the engine process hung: it {self._hung}")

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Stop the process (in order on a shutdown, killed otherwise) and report its end."""
        process = self._process
        if process is None:
            return
        clean = exit_kind is ExitKind.SHUTDOWN and self._hung is None
        if clean:
            await self._shut_down(process)
            await self._spawner.close()
        exit_info = await self._ended(process, clean=clean, started=self._up)
        if not clean:
            log.error("engine process %d %s", exit_info.pid, exit_info.reason)

    async def _ended(
        self, process: EngineProcess, *, clean: bool, started: bool, unloaded: bool = False
    ) -> EngineExit:
        """Reap ``process`` (killed first unless it stopped cleanly); tell the router it is down.

        The one way an engine process ends here: a start that failed, a stop
        (in order or killed), and an unload on the keeper's word.
        """
        if not clean:
            process.kill()
        exit_info = await process.reap()
        if self._hung is not None:
            exit_info = msgspec.structs.replace(exit_info, reason=f"hung ({self._hung}); killed")
        down = EngineDown(exit=exit_info, clean=clean, started=started, unloaded=unloaded)
        with contextlib.suppress(TroupeError):  # the generation actor is gone too
            await self.ctx.lookup(self._peers.generation).tell(down)
        return exit_info

    async def _shut_down(self, process: EngineProcess) -> None:
        with anyio.move_on_after(self.settings.stop_timeout):
            try:
                await process.send(Shutdown())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            generation = self.ctx.lookup(self._peers.generation)
            while (message := await process.receive()) is not None:
                match message:
                    case ShutdownDone():
                        return
                    case Outputs(events=events):  # the requests it failed as shutting down
                        await generation.tell(EngineOutputs(pid=process.pid, events=events))
                    case LogLine():
                        _relog(message)
                    case _:
                        pass
        process.kill()


def _relog(line: LogLine) -> None:
    logging.getLogger(line.logger).log(line.level, "%s", line.message)


__all__ = [
    "ENGINE_ACTOR",
    "EngineActor",
    "EngineExit",
    "EnginePeers",
    "EngineProcessDied",
    "EngineProcessSettings",
]
