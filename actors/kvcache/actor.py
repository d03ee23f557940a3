"""The kv-cache actor: the control plane around the engine's :class:`PrefixCache`.

The cache itself (and its memory monitor) is built by the composition root and
handed to every incarnation through the child's factory, so a crash of this
actor restarts the control plane while the cached KV state, which the engine
keeps using from its own thread, survives.

The actor answers statistics, runs memory-pressure checks (on request and
periodically on the system clock), saves and loads the cache, and injects
faults for drills. The work is :class:`~actors.kvcache.control.CacheHandler`'s;
everything that blocks (MLX work, file I/O, freeing large buffers) runs in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import logging

import anyio

from actors.kvcache.control import CACHE_REQUESTS, CacheHandler, KVCacheSettings
from actors.kvcache.pressure import MemoryMonitor
from actors.kvcache.protocol import (
    CheckPressure,
    GetCacheStats,
    InjectCacheFaults,
    SimulatePressure,
)
from actors.kvcache.store import PrefixCache
from runtime.actor import Actor
from runtime.errors import DeliveryError, describe_failure
from runtime.messages import Message
from runtime.node import ExitKind
from runtime.spec import ChildSpec

log = logging.getLogger("troupe.kvcache")

__all__ = ["KVCacheActor", "KVCacheSettings", "kvcache_child"]


class KVCacheActor(Actor):
    """Answers the kv-cache protocol for a cache that outlives it."""

    def __init__(
        self,
        cache: PrefixCache,
        *,
        monitor: MemoryMonitor | None = None,
        settings: KVCacheSettings | None = None,
    ) -> None:
        self.control = CacheHandler(cache, monitor, settings)
        self.cache = cache
        self.monitor = monitor
        self.settings = self.control.settings
        self._check_queued = False
        # The actor handles one message at a time, so one thread is all it
        # uses; its own limiter keeps a slow save from waiting behind (or
        # holding up) other work's threads in anyio's shared pool.
        self._thread = anyio.CapacityLimiter(1)

    async def on_start(self) -> None:
        """Restore persisted entries into an empty cache, then start the pressure timer."""
        # A restart after a crash finds the cache warm and keeps it as it is.
        await anyio.to_thread.run_sync(self.control.restore, limiter=self._thread)
        if self.monitor is not None and self.settings.check_interval is not None:
            self.ctx.start_soon(self._pressure_timer, self.settings.check_interval)

    async def handle(self, message: Message) -> Message | None:
        """Answer one request of the kv-cache protocol."""
        if not isinstance(message, CACHE_REQUESTS):
            return await super().handle(message)
        if isinstance(message, GetCacheStats | InjectCacheFaults):
            return self.control.answer(message)  # counters only: no thread needed
        if isinstance(message, CheckPressure | SimulatePressure):
            self._check_queued = False
        return await anyio.to_thread.run_sync(self.control.answer, message, limiter=self._thread)

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Persist the cache on a clean shutdown (runs in a worker thread)."""
        if exit_kind is ExitKind.SHUTDOWN:
            await anyio.to_thread.run_sync(self.control.save_on_stop, limiter=self._thread)

    async def _pressure_timer(self, interval: float) -> None:
        """Queue a pressure check every ``interval`` seconds of the system clock.

        The check itself goes through the mailbox, so it never runs alongside a
        requested one and the replies that follow it see its outcome.
        """
        clock = self.ctx.clock
        deadline = clock.monotonic() + interval
        while True:
            await clock.sleep_until(deadline)
            if not self._check_queued:
                try:
                    self.ctx.ref.tell_nowait(CheckPressure())
                    self._check_queued = True
                except DeliveryError as exc:  # a full mailbox: the next tick tries again
                    log.warning("kv-cache pressure check skipped: %s", describe_failure(exc))
            deadline += interval
            if deadline <= clock.monotonic():  # fell behind: do not fire in a burst
                deadline = clock.monotonic() + interval


def kvcache_child(
    cache: PrefixCache,
    *,
    monitor: MemoryMonitor | None = None,
    settings: KVCacheSettings | None = None,
    child_id: str = "kvcache",
) -> ChildSpec:
    """The child spec of a kv-cache actor whose every incarnation shares ``cache``."""
    return ChildSpec(child_id, lambda: KVCacheActor(cache, monitor=monitor, settings=settings))
