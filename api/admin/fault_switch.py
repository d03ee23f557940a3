"""``/admin/faults``: the fault-injection switch, for drills and the reliability tests.

Off by default (``--fault-injection``), refused at startup when the server
listens beyond loopback unless ``--allow-remote-faults`` is also given, and
behind the admin key like every ``/admin`` route. With the switch off the
route answers 404, as if it did not exist.

``POST /admin/faults`` takes one fault, chosen by ``kind``:

==================  ==========================================================
kind                what it does
==================  ==========================================================
``engine_crash``    the engine raises after ``after_tokens`` tokens, ``times``
                    times (across restarts): the generation actor crashes and
                    its supervisor restarts it
``engine_oom``      the same, as an allocation failure: caches are cleared and
                    only the requests in flight fail
``engine_kill``     the engine process kills itself with SIGKILL after
                    ``after_tokens`` tokens, ``times`` times (a native crash)
``engine_hang``     the engine stops stepping after ``after_tokens`` tokens,
                    ``times`` times (a native deadlock: the hang detector
                    restarts it)
``engine_poison``   the engine process dies whenever request ``request_id``
                    (the ``x-request-id`` it was sent with) is in the batch
``engine_exit_on_load`` the next ``times`` engine processes exit while they
                    load the model
``cache_faults``    the next ``count`` prefix-cache operations fail (5 in a row
                    open the cache's circuit breaker)
``corrupt_cache``   the cache is saved, then ``count`` of its files are damaged
                    (flipped bytes, or cut in half with ``truncate``); the next
                    start drops exactly those
``memory_pressure`` memory reads ``excess_mb`` above the high-water mark while
                    ``active``: the cache is shed and new requests get 429
``slow_actor``      ``actor`` waits ``seconds`` before each of its next
                    ``messages`` messages
==================  ==========================================================

The four process faults need the engine in its own process (``--engine
process``, the default); with ``--engine thread`` they are refused (409), as
they would take the whole server down.

``DELETE /admin/faults`` ends every drill that lasts: armed engine faults are
disarmed, the memory simulation stops, slowed actors run at full speed.
Every fault travels to its actor as a message through the actor's reference.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from actors.generation.protocol import (
    ClearEngineFaults,
    EngineFault,
    EngineFaultsCleared,
    InjectEngineFault,
)
from actors.kvcache.protocol import (
    CorruptPersisted,
    FaultsInjected,
    InjectCacheFaults,
    PersistedCorrupted,
    PressureReport,
    SimulatePressure,
)
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from runtime import ActorSystem, SlowDown, SlowedDown

FAULT_ASK_TIMEOUT = 30.0
"""Seconds to wait for an actor to take a fault (a cache save may come first)."""
MIB = 1024**2
MAX_BODY = 4096

Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class _Fault(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of the fault bodies; ``kind`` picks the class."""


class EngineCrash(_Fault, frozen=True, kw_only=True, tag="engine_crash"):
    """Crash the engine after ``after_tokens`` tokens, ``times`` times."""

    after_tokens: Count = 1
    times: Count = 1


class EngineOOM(_Fault, frozen=True, kw_only=True, tag="engine_oom"):
    """Fail an engine step as an allocation failure after ``after_tokens`` tokens."""

    after_tokens: Count = 1
    times: Count = 1


class EngineKill(_Fault, frozen=True, kw_only=True, tag="engine_kill"):
    """SIGKILL the engine process after ``after_tokens`` tokens, ``times`` times."""

    after_tokens: Count = 1
    times: Count = 1


class EngineHang(_Fault, frozen=True, kw_only=True, tag="engine_hang"):
    """Stop the engine's loop after ``after_tokens`` tokens, ``times`` times."""

    after_tokens: Count = 1
    times: Count = 1


class EnginePoison(_Fault, frozen=True, kw_only=True, tag="engine_poison"):
    """Kill the engine process whenever request ``request_id`` is in the batch."""

    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    times: Count = 1000


class EngineExitOnLoad(_Fault, frozen=True, kw_only=True, tag="engine_exit_on_load"):
    """Make the next ``times`` engine processes exit while they load the model."""

    times: Count = 1


class CacheFaults(_Fault, frozen=True, kw_only=True, tag="cache_faults"):
    """Fail the next ``count`` prefix-cache operations."""

    count: Count = 1


class CorruptCache(_Fault, frozen=True, kw_only=True, tag="corrupt_cache"):
    """Save the cache and damage ``count`` of its files."""

    count: Count = 1
    truncate: bool = False


class MemoryPressure(_Fault, frozen=True, kw_only=True, tag="memory_pressure"):
    """Simulate memory above the high-water mark while ``active``."""

    active: bool = True
    excess_mb: Annotated[float, msgspec.Meta(ge=0, le=1_048_576)] = 64.0


class SlowActor(_Fault, frozen=True, kw_only=True, tag="slow_actor"):
    """Delay each of an actor's next ``messages`` messages by ``seconds``."""

    actor: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    seconds: Annotated[float, msgspec.Meta(ge=0, le=600)]
    messages: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1


Fault = (
    EngineCrash
    | EngineOOM
    | EngineKill
    | EngineHang
    | EnginePoison
    | EngineExitOnLoad
    | CacheFaults
    | CorruptCache
    | MemoryPressure
    | SlowActor
)
"""A ``POST /admin/faults`` body."""


class FaultSwitch:
    """Turns fault bodies into messages to the actors that carry them out."""

    def __init__(
        self,
        enabled: bool,
        *,
        engine_process: bool = True,
        generation: str = "generation",
        kvcache: str = "kvcache",
    ) -> None:
        self.enabled = enabled
        self.engine_process = engine_process
        """Whether the engine runs in its own process (the process faults need one)."""
        self._generation = generation
        """The generation actor the engine faults go to (the first model's, with several)."""
        self._kvcache = kvcache

    async def inject(self, system: ActorSystem, request: Request, respond: Responder) -> None:
        """``POST /admin/faults``: carry out one fault, answer what was done."""
        self._require_enabled()
        fault = await request.json_body(Fault, MAX_BODY)
        done = await self._apply(system, fault)
        await respond.json(200, {"kind": fault.__struct_config__.tag, **done})

    async def clear(self, system: ActorSystem, request: Request, respond: Responder) -> None:
        """``DELETE /admin/faults``: end the drills that last."""
        self._require_enabled()
        cleared = await system.ref(self._generation).ask(
            ClearEngineFaults(), timeout=FAULT_ASK_TIMEOUT, expect=EngineFaultsCleared
        )
        await system.ref(self._kvcache).ask(
            SimulatePressure(excess_bytes=None), timeout=FAULT_ASK_TIMEOUT, expect=PressureReport
        )
        for name in _workers(system):
            await system.ref(name).ask(SlowDown(seconds=0.0, messages=0), timeout=FAULT_ASK_TIMEOUT)
        await respond.json(200, {"engine_faults_disarmed": cleared.pending})

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise HTTPProblem(404, "not-found", "fault injection is off (--fault-injection)")

    async def _apply(self, system: ActorSystem, fault: Fault) -> dict[str, Any]:
        match fault:
            case (
                EngineCrash(after_tokens=after, times=times)
                | EngineOOM(after_tokens=after, times=times)
            ):
                kind = EngineFault.CRASH if isinstance(fault, EngineCrash) else EngineFault.OOM
                message = InjectEngineFault(kind=kind, after_tokens=after, times=times)
                await system.ref(self._generation).tell(message)
                return {"after_tokens": after, "times": times}
            case EngineKill() | EngineHang() | EnginePoison() | EngineExitOnLoad():
                return await self._process_fault(system, fault)
            case CacheFaults(count=count):
                pending = await system.ref(self._kvcache).ask(
                    InjectCacheFaults(count=count), timeout=FAULT_ASK_TIMEOUT, expect=FaultsInjected
                )
                return {"pending": pending.pending}
            case CorruptCache(count=count, truncate=truncate):
                return await self._corrupt(system, count, truncate=truncate)
            case MemoryPressure(active=active, excess_mb=excess_mb):
                excess = int(excess_mb * MIB) if active else None
                report = await system.ref(self._kvcache).ask(
                    SimulatePressure(excess_bytes=excess),
                    timeout=FAULT_ASK_TIMEOUT,
                    expect=PressureReport,
                )
                return {"under_pressure": report.under_pressure, "evicted": report.evicted_entries}
            case SlowActor(actor=actor, seconds=seconds, messages=messages):
                if actor not in _workers(system):
                    raise HTTPProblem(422, "invalid-field", "`actor` names no actor of this server")
                slowed = await system.ref(actor).ask(
                    SlowDown(seconds=seconds, messages=messages),
                    timeout=FAULT_ASK_TIMEOUT,
                    expect=SlowedDown,
                )
                return {"actor": actor, "messages": slowed.messages}

    async def _process_fault(
        self, system: ActorSystem, fault: EngineKill | EngineHang | EnginePoison | EngineExitOnLoad
    ) -> dict[str, Any]:
        if not self.engine_process:
            raise HTTPProblem(
                409, "engine-in-process", "this fault needs the engine in its own process"
            )
        match fault:
            case (
                EngineKill(after_tokens=after, times=times)
                | EngineHang(after_tokens=after, times=times)
            ):
                kind = EngineFault.KILL if isinstance(fault, EngineKill) else EngineFault.HANG
                message = InjectEngineFault(kind=kind, after_tokens=after, times=times)
                done: dict[str, Any] = {"after_tokens": after, "times": times}
            case EnginePoison(request_id=request_id, times=times):
                message = InjectEngineFault(
                    kind=EngineFault.POISON, times=times, request_id=request_id
                )
                done = {"request_id": request_id, "times": times}
            case EngineExitOnLoad(times=times):
                message = InjectEngineFault(kind=EngineFault.EXIT_ON_LOAD, times=times)
                done = {"times": times}
        await system.ref(self._generation).tell(message)
        return done

    async def _corrupt(self, system: ActorSystem, count: int, *, truncate: bool) -> dict[str, Any]:
        done = await system.ref(self._kvcache).ask(
            CorruptPersisted(count=count, truncate=truncate),
            timeout=FAULT_ASK_TIMEOUT,
            expect=PersistedCorrupted,
        )
        if not done.enabled:
            raise HTTPProblem(409, "no-cache-dir", "the cache is not persisted (--cache-dir)")
        return {"corrupted": done.corrupted}


def _workers(system: ActorSystem) -> list[str]:
    return [node.name for node in system.status().root.workers()]
