"""Messages between the generation actor and the engine actor (both in the server).

The engine actor owns one engine process at a time and names it by its pid;
the generation actor keeps every request across engine processes. Every
message about a process carries its pid, so nothing meant for a dead engine
reaches its successor.

=====================  ===========================  ===========================
message                from -> to                   meaning
=====================  ===========================  ===========================
``GetBootFaults``      engine -> generation (ask)   faults the next process arms
``EngineUp``           engine -> generation         a process is ready
``EngineOutputs``      engine -> generation         one step's events
``EngineBeat``         engine -> generation         a heartbeat
``EngineFaultFired``   engine -> generation         an armed fault fired
``EngineDown``         engine -> generation         the process ended
``EngineLoadFailed``   engine -> generation         a load on demand failed
``Submit``             generation -> engine         run a request on process pid
``CancelOn``           generation -> engine         cancel it there
``RelayFault``         generation -> engine         arm or disarm faults there
``RelayCache``         kvcache -> engine (ask)      a kv-cache request for its cache
=====================  ===========================  ===========================
"""

from __future__ import annotations

import msgspec

from actors.generation.engine.process_protocol import ArmedFault, Heartbeat, Ready
from actors.generation.protocol import (
    EngineExit,
    EngineFault,
    EngineRequest,
    Failed,
    Finished,
    TokenChunk,
)
from actors.kvcache.control import CacheRequest
from actors.kvcache.protocol import CacheStats
from runtime.messages import Message


class GetBootFaults(Message, frozen=True, kw_only=True):
    """Which faults a new engine process arms (answered with :class:`BootFaults`)."""


class BootFaults(Message, frozen=True, kw_only=True):
    """The armed faults, and whether this process is to exit while loading."""

    faults: list[ArmedFault] = msgspec.field(default_factory=list)
    exit_on_load: bool = False
    load: bool = True
    """Whether an engine that loads on demand loads now (requests wait, or it was loaded)."""


class EngineUp(Message, frozen=True, kw_only=True):
    """Engine process ``pid`` loaded the model and steps."""

    pid: int
    ready: Ready


class EngineOutputs(Message, frozen=True, kw_only=True):
    """The events of one step of process ``pid``."""

    pid: int
    events: list[TokenChunk | Finished | Failed]
    cache: CacheStats | None = None


class EngineBeat(Message, frozen=True, kw_only=True):
    """A heartbeat of process ``pid``."""

    pid: int
    beat: Heartbeat


class EngineFaultFired(Message, frozen=True, kw_only=True):
    """An injected fault fired in process ``pid``."""

    pid: int
    kind: EngineFault


class EngineDown(Message, frozen=True, kw_only=True):
    """Process ``pid`` ended; ``clean`` if it was shut down on purpose."""

    exit: EngineExit
    clean: bool
    started: bool
    """Whether it had come up (sent :class:`EngineUp`) before it ended."""
    unloaded: bool = False
    """Stopped to free its memory (idle, or room for another model): its requests go on."""


class EngineLoadFailed(Message, frozen=True, kw_only=True):
    """The engine could not load the model on demand; it stays without a process."""

    reason: str


class Submit(Message, frozen=True, kw_only=True):
    """Run ``request`` on process ``pid`` (dropped if that process is gone)."""

    pid: int
    request: EngineRequest


class CancelOn(Message, frozen=True, kw_only=True):
    """Cancel ``request_id`` on process ``pid``."""

    pid: int
    request_id: str


class RelayFault(Message, frozen=True, kw_only=True):
    """Arm ``fault`` in the running process, or disarm every fault (``None``)."""

    fault: ArmedFault | None


class RelayCache(Message, frozen=True, kw_only=True):
    """A kv-cache request for the cache in the engine process; answered with its reply."""

    request: CacheRequest
