"""The engine process: the model, the batch engine and the prefix cache, alone.

Started by the engine actor as ``python -m actors.generation.engine.worker FD``, it
talks to its parent only through the Unix socket ``FD`` (frames of
:mod:`runtime.wire`, messages of :mod:`~actors.generation.engine.process_protocol`).
Threads, no event loop (nothing here imports anyio):

* the main thread reads the parent's frames and hands requests to the engine;
* the engine thread steps the batch and hands each step's events over;
* the output thread sends them as frames (:mod:`.output_thread`), so a slow
  parent never stalls a decode step;
* the heartbeat thread reports the step counter every ``heartbeat_interval``;
* the control thread answers kv-cache requests and runs the pressure checks.

Whatever goes wrong here ends the process: the parent sees the exit, restarts
a fresh one and resumes the requests. If the parent goes away, so does this
process (the socket reaches end of file; on Linux the kernel also kills it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.embedding_queue import embedding_size
from actors.generation.engine.faults import FaultPlan
from actors.generation.engine.lockstep import Lockstep
from actors.generation.engine.output_thread import OutputThread
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
    ToEngine,
)
from actors.generation.engine.requests import vocab_size
from actors.generation.protocol import (
    Cancel,
    Embed,
    EngineFault,
    Failed,
    Finished,
    Generate,
    StreamEvent,
)
from actors.generation.shards.group import (
    ShardGroup,
    check_splittable,
    die_with_parent,
    shard_model,
    start_group,
)
from actors.kvcache.control import CacheHandler
from actors.kvcache.pressure import MemoryMonitor
from actors.kvcache.store import PrefixCache
from actors.memory import MemoryFigures, read_memory
from actors.model.load_errors import ModelLoadError
from actors.model.loader import LoadedModel, load_model
from actors.model.weights import fit_for_device, kv_bytes_per_token, weight_bytes
from actors.telemetry import start_tracing, stop_tracing
from runtime.breaker import CircuitBreaker
from runtime.errors import describe_failure
from runtime.wire import BlockingChannel

log = logging.getLogger("troupe.engine")

EXIT_LOAD_FAILED = 2
EXIT_INJECTED = 3
EXIT_CRASHED = 4
STOP_TIMEOUT = 30.0
"""Seconds a shutdown waits for the engine's step in progress."""
FLUSH_TIMEOUT = 5.0
"""Seconds a crashing engine waits for its last outputs to reach the parent."""


class _ForwardLogs(logging.Handler):
    """Sends log records to the parent, which writes them in the server's format."""

    def __init__(self, channel: BlockingChannel[ToEngine]) -> None:
        super().__init__(logging.INFO)
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            self._channel.send(
                LogLine(logger=record.name, level=record.levelno, message=record.getMessage())
            )


class EngineSession:
    """One booted engine process: serves until told to stop or its parent leaves."""

    def __init__(
        self,
        loaded: LoadedModel,
        boot: Boot,
        channel: BlockingChannel[ToEngine],
        shards: ShardGroup | None = None,
    ) -> None:
        self._boot = boot
        self._shards = shards
        self._channel = channel
        self._loaded = loaded
        cache = PrefixCache(
            max_entries=boot.cache_max_entries,
            max_bytes=boot.cache_max_bytes,
            breaker=CircuitBreaker(boot.breaker),
        )
        self._monitor = MemoryMonitor(cache, boot.pressure)
        self._memory: MemoryFigures | None = None
        """This process's memory, as last read for a heartbeat (peaks carry over)."""
        self._control = CacheHandler(cache, self._monitor, boot.cache)
        self._calls: queue.SimpleQueue[CacheCall | None] = queue.SimpleQueue()
        self._faults = FaultPlan(on_fire=self._fault_fired)
        for fault in boot.faults:
            self._faults.arm(fault.kind, fault.after_tokens, fault.times, fault.request_id)
        self._outputs = OutputThread(self._send_outputs)
        self._engine = Engine(
            loaded,
            self._outputs.put,
            self._crashed,
            # A split model's ranks would not share the leader's cache hits.
            prefix_store=cache if shards is None else None,
            config=boot.engine,
            faults=self._faults,
            lockstep=None if shards is None else Lockstep(shards.group),
        )
        self._stopping = threading.Event()

    def serve(self) -> int:
        """Run until :class:`Shutdown` (0) or the parent's end of file (0)."""
        self._control.restore()
        # Before the engine starts: it runs the model, and a split model's ranks
        # run every forward pass together (the followers run this one too).
        per_token = kv_bytes_per_token(self._loaded.model)
        self._outputs.start()
        self._engine.start()
        self._channel.send(
            Ready(
                model=self._loaded.name,
                context_length=self._loaded.context_length,
                vocab_size=vocab_size(self._loaded),
                embedding_size=embedding_size(self._loaded),
                weights_bytes=weight_bytes(self._loaded.model),
                kv_bytes_per_token=per_token,
                cache=self._control.stats(),
            )
        )
        control = threading.Thread(target=self._answer_calls, name="troupe-control", daemon=True)
        control.start()
        threading.Thread(target=self._beat, name="troupe-heartbeat", daemon=True).start()
        while (message := self._channel.receive()) is not None:
            match message:
                case Generate() | Embed():
                    self._engine.submit(message)
                case Cancel(request_id=request_id):
                    self._engine.cancel(request_id)
                case CacheCall():
                    self._calls.put(message)
                case ArmFault(fault=fault):
                    self._faults.arm(fault.kind, fault.after_tokens, fault.times, fault.request_id)
                case DisarmFaults():
                    self._faults.clear()
                case Shutdown():
                    return self._shut_down(control)
        os._exit(0)  # the parent is gone: nothing to answer, nothing worth saving

    def _shut_down(self, control: threading.Thread) -> int:
        self._stopping.set()
        if self._shards is not None:
            self._shards.stopping.set()  # the stop turn ends the followers too
        self._engine.stop()
        self._engine.join(STOP_TIMEOUT)
        self._outputs.close(STOP_TIMEOUT)  # the last events go before ShutdownDone
        if self._shards is not None:
            self._shards.reap()
        self._calls.put(None)  # the control thread saves the cache, then ends
        control.join()
        self._channel.send(ShutdownDone())
        return 0

    def _send_outputs(self, events: list[StreamEvent]) -> None:
        """Output thread: one frame of one or more steps' events."""
        ended = any(isinstance(event, Finished | Failed) for event in events)
        # Counters ride with the step that ended a request: the parent reports
        # them before it delivers that end, so a finished client finds them counted.
        cache = self._control.stats() if ended else None
        try:
            self._channel.send(Outputs(events=events, cache=cache))
        except OSError:
            os._exit(0)  # the parent is gone

    def _crashed(self, reason: str) -> None:
        """Engine thread: the engine raised; the process ends and the parent resumes."""
        log.error("the engine process ends: %s", reason)
        # What was generated before the crash still reaches its clients: the
        # parent resumes each request from what it was delivered.
        self._outputs.close(FLUSH_TIMEOUT)
        os._exit(EXIT_CRASHED)

    def _fault_fired(self, kind: EngineFault) -> None:
        with contextlib.suppress(OSError):
            self._channel.send(FaultFired(kind=kind))

    def _beat(self) -> None:
        interval = self._boot.heartbeat_interval
        while not self._stopping.wait(interval):
            engine = self._engine
            running, waiting = engine.counts()
            self._memory = read_memory(self._memory)
            beat = Heartbeat(
                steps=engine.steps,
                running=running,
                waiting=waiting,
                prompt_tokens=engine.prompt_tokens,
                generated_tokens=engine.generated_tokens,
                cached_tokens=engine.cached_tokens,
                under_pressure=self._monitor.under_pressure,
                cache=self._control.stats(),
                memory=self._memory,
            )
            try:
                self._channel.send(beat)
            except OSError:
                os._exit(0)

    def _answer_calls(self) -> None:
        interval = self._boot.cache.check_interval
        while True:
            try:
                call = self._calls.get(timeout=interval)
            except queue.Empty:
                self._check_pressure()
                continue
            if call is None:
                self._control.save_on_stop()
                return
            try:
                answer = self._control.answer(call.request)
            except Exception as exc:  # a bug in one call must not end the engine
                log.error("kv-cache call failed: %s", describe_failure(exc))
                continue
            with contextlib.suppress(OSError):
                self._channel.send(CacheReply(call=call.call, answer=answer))  # type: ignore[arg-type]

    def _check_pressure(self) -> None:
        try:
            self._control.check_pressure()
        except Exception as exc:
            log.warning("kv-cache pressure check failed: %s", describe_failure(exc))


def main(argv: list[str] | None = None) -> int:
    """Serve one engine over the inherited socket named by ``argv[0]``."""
    args = sys.argv[1:] if argv is None else argv
    parent = os.getppid()
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this ends
    channel: BlockingChannel[ToEngine] = BlockingChannel(
        socket.socket(fileno=int(args[0])), ToEngine
    )
    if os.getppid() != parent:
        return 0  # the parent died before the death signal was armed
    logging.basicConfig(level=logging.INFO, handlers=[_ForwardLogs(channel)], force=True)
    boot = channel.receive()
    if not isinstance(boot, Boot):
        return EXIT_LOAD_FAILED
    if boot.exit_on_load:
        log.warning("engine: injected fault ends the process while it loads")
        return EXIT_INJECTED
    shards: ShardGroup | None = None
    try:
        loaded = fit_for_device(
            load_model(boot.model), boot.engine.weights, boot.pressure.high_water
        )
        if boot.engine.shards > 1:
            check_splittable(loaded, boot.engine.shards)
            shards = start_group(boot)  # the followers load the model now
            shard_model(loaded, shards.group)
    except ModelLoadError as exc:
        channel.send(LoadFailed(reason=str(exc)))
        return EXIT_LOAD_FAILED
    provider = start_tracing(boot.tracing, "engine") if boot.tracing is not None else None
    try:
        return EngineSession(loaded, boot, channel, shards).serve()
    finally:
        stop_tracing(provider)  # the last spans, before the exit that skips teardown


def _exit_without_teardown(code: int) -> None:
    """End the process once everything is saved and answered.

    The interpreter's teardown can meet MLX's native threads still alive and
    abort ("terminate called without an active exception" on stderr, which
    breaks the server's JSON log and turns exit 0 into SIGABRT). The api's CLI
    ends the same way for the same reason.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_without_teardown(main())
