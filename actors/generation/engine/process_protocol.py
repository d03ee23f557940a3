"""Messages between the server and its engine process (frames of :mod:`runtime.wire`).

The parent sends :data:`ToEngine`, the engine process answers with
:data:`FromEngine`. Requests and their events are the generation protocol's
own messages (:class:`Generate`, :class:`Cancel`, :class:`TokenChunk`,
:class:`Finished`, :class:`Failed`); the events of one engine step travel
together in one :class:`Outputs`, never one frame per token.

A session: the parent sends :class:`Boot`; the engine process loads the model
and answers :class:`Ready` (or :class:`LoadFailed`, then exits); from then on
it sends :class:`Outputs` after every step that produced events and a
:class:`Heartbeat` every ``heartbeat_interval`` seconds, until the parent
sends :class:`Shutdown` (answered by :class:`ShutdownDone`, then it exits) or
closes the socket (it exits at once).
"""

from __future__ import annotations

import msgspec

from actors.generation.engine.engine_config import EngineConfig
from actors.generation.protocol import (
    Cancel,
    Embed,
    EngineFault,
    Failed,
    Finished,
    Generate,
    TokenChunk,
)
from actors.kvcache.control import CacheAnswer, CacheRequest, KVCacheSettings
from actors.kvcache.pressure import PressureConfig
from actors.kvcache.protocol import CacheStats
from actors.memory import MemoryFigures
from actors.telemetry import TracingConfig
from runtime.breaker import BreakerConfig
from runtime.messages import Message


class ArmedFault(Message, frozen=True, kw_only=True):
    """An injected fault, as the engine process should arm it."""

    kind: EngineFault
    after_tokens: int = 1
    times: int = 1
    request_id: str = ""


class Boot(Message, frozen=True, kw_only=True):
    """Everything the engine process needs; the first frame the parent sends."""

    model: str
    """The model directory (or hub id) to load."""
    engine: EngineConfig
    cache_max_entries: int
    cache_max_bytes: int
    breaker: BreakerConfig
    pressure: PressureConfig
    cache: KVCacheSettings
    """Persistence and the pressure-check interval of the cache the engine owns."""
    heartbeat_interval: float
    faults: list[ArmedFault] = msgspec.field(default_factory=list)
    exit_on_load: bool = False
    """Fault injection: exit while loading, as a crash during load would."""
    tracing: TracingConfig | None = None
    """Where the engine exports its spans; ``None``: tracing is off."""


class Shutdown(Message, frozen=True, kw_only=True):
    """Finish: fail what is in flight as shutting down, save the cache, exit."""


class CacheCall(Message, frozen=True, kw_only=True):
    """A kv-cache protocol request for the cache in the engine process."""

    call: int
    request: CacheRequest


class ArmFault(Message, frozen=True, kw_only=True):
    """Arm a fault in the running engine."""

    fault: ArmedFault


class DisarmFaults(Message, frozen=True, kw_only=True):
    """Disarm every fault of the running engine."""


ToEngine = Generate | Embed | Cancel | CacheCall | ArmFault | DisarmFaults | Shutdown | Boot
"""Every frame the parent sends."""


class Ready(Message, frozen=True, kw_only=True):
    """The model is loaded and the engine is stepping."""

    model: str
    context_length: int
    vocab_size: int
    cache: CacheStats
    embedding_size: int = 0
    weights_bytes: int = 0
    """Bytes the weights take in the layout the engine runs."""
    kv_bytes_per_token: int = 0
    """KV cache bytes per token (0: unknown), for memory-aware admission."""


class LoadFailed(Message, frozen=True, kw_only=True):
    """The model could not be loaded (one sanitized line); the process exits next."""

    reason: str


class Outputs(Message, frozen=True, kw_only=True):
    """The events of one engine step, in order."""

    events: list[TokenChunk | Finished | Failed]
    cache: CacheStats | None = None
    """The prefix cache's counters, after a step in which a request ended."""


class Heartbeat(Message, frozen=True, kw_only=True):
    """The engine is alive; ``steps`` shows whether its loop is making progress."""

    steps: int
    running: int
    waiting: int
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int
    under_pressure: bool
    cache: CacheStats | None = None
    memory: MemoryFigures | None = None
    """The engine process's own memory (the metrics cannot read another process)."""


class CacheReply(Message, frozen=True, kw_only=True):
    """The answer to a :class:`CacheCall`."""

    call: int
    answer: CacheAnswer


class FaultFired(Message, frozen=True, kw_only=True):
    """An armed fault fired (sent before it takes effect, so the count survives)."""

    kind: EngineFault


class LogLine(Message, frozen=True, kw_only=True):
    """A log record of the engine process, for the parent's log."""

    logger: str
    level: int
    message: str


class ShutdownDone(Message, frozen=True, kw_only=True):
    """The engine stopped cleanly and the cache is saved."""


FromEngine = (
    Ready | LoadFailed | Outputs | Heartbeat | CacheReply | FaultFired | LogLine | ShutdownDone
)
"""Every frame the engine process sends."""
