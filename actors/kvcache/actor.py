"""The kv-cache actor: the control plane around the engine's :class:`PrefixCache`.

The cache itself (and its memory monitor) is built by the composition root and
handed to every incarnation through the child's factory, so a crash of this
actor restarts the control plane while the cached KV state, which the engine
keeps using from its own thread, survives.

The actor answers statistics, runs memory-pressure checks (on request and
periodically on the system clock), saves and loads the cache, and injects
faults for drills. Everything that blocks (MLX work, file I/O, freeing large
buffers) runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import anyio
import msgspec

from actors.kvcache.persistence import corrupt_files, load_cache, save_cache
from actors.kvcache.pressure import MemoryMonitor, PressureOutcome
from actors.kvcache.protocol import (
    CacheCleared,
    CacheLoaded,
    CacheSaved,
    CacheStats,
    CheckPressure,
    ClearCache,
    CorruptPersisted,
    FaultsInjected,
    GetCacheStats,
    InjectCacheFaults,
    LoadCache,
    PersistedCorrupted,
    PressureReport,
    SaveCache,
    SimulatePressure,
)
from actors.kvcache.store import PrefixCache
from runtime.actor import Actor
from runtime.errors import DeliveryError, describe_failure
from runtime.messages import Message
from runtime.node import ExitKind
from runtime.spec import ChildSpec

log = logging.getLogger("troupe.kvcache")


@dataclass(frozen=True)
class KVCacheSettings:
    """How the kv-cache actor runs."""

    directory: str | None = None
    """Where :class:`SaveCache` writes and :class:`LoadCache` reads; ``None``: no persistence."""
    model: str = ""
    """Identifies the model the entries belong to; files of another model are dropped."""
    load_on_start: bool = True
    """Load persisted entries when an incarnation starts with an empty cache."""
    check_interval: float | None = 5.0
    """Seconds between periodic pressure checks; ``None`` checks only on request."""
    save_on_stop: bool = True
    """Save the cache when the actor is shut down (not after a crash: the
    cache may be what failed), so a restarted server starts warm."""

    def __post_init__(self) -> None:
        if self.check_interval is not None and self.check_interval <= 0:
            raise ValueError("the pressure check interval must be positive")


class KVCacheActor(Actor):
    """Answers the kv-cache protocol for a cache that outlives it."""

    def __init__(
        self,
        cache: PrefixCache,
        *,
        monitor: MemoryMonitor | None = None,
        settings: KVCacheSettings | None = None,
    ) -> None:
        self.cache = cache
        self.monitor = monitor
        self.settings = settings or KVCacheSettings()
        self._check_queued = False
        # The actor handles one message at a time, so one thread is all it
        # uses; its own limiter keeps a slow save from waiting behind (or
        # holding up) other work's threads in anyio's shared pool.
        self._thread = anyio.CapacityLimiter(1)

    async def on_start(self) -> None:
        """Restore persisted entries into an empty cache, then start the pressure timer."""
        # A restart after a crash finds the cache warm and keeps it as it is.
        if self.settings.load_on_start and self.cache.statistics().entries == 0:
            try:
                loaded = await self._load()
            except OSError as exc:  # an unreadable directory: serve with a cold cache
                log.warning("kv-cache not restored: %s", describe_failure(exc))
            else:
                if loaded.enabled:
                    log.info(
                        "kv-cache restored %d entries (%d bad files dropped, %d skipped)",
                        loaded.loaded,
                        loaded.dropped,
                        loaded.skipped,
                    )
        if self.monitor is not None and self.settings.check_interval is not None:
            self.ctx.start_soon(self._pressure_timer, self.settings.check_interval)

    async def handle(self, message: Message) -> Message | None:
        """Answer one request of the kv-cache protocol."""
        answer: Message | None
        match message:
            case GetCacheStats():
                answer = self._stats()
            case CheckPressure():
                answer = await self._check_pressure()
            case ClearCache():
                cleared = await anyio.to_thread.run_sync(self.cache.clear, limiter=self._thread)
                answer = CacheCleared(entries=cleared.entries, nbytes=cleared.nbytes)
            case SaveCache():
                answer = await self._save()
            case LoadCache():
                answer = await self._load()
            case InjectCacheFaults(count=count):
                answer = FaultsInjected(pending=self.cache.inject_faults(max(0, count)))
            case SimulatePressure(excess_bytes=excess):
                answer = await self._simulate_pressure(excess)
            case CorruptPersisted(count=count, truncate=truncate):
                answer = await self._corrupt(count, truncate=truncate)
            case _:
                answer = await super().handle(message)
        return answer

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Persist the cache on a clean shutdown (runs in a worker thread)."""
        if exit_kind is ExitKind.SHUTDOWN and self.settings.save_on_stop:
            try:
                saved = await self._save()
            except OSError as exc:  # a full or read-only disk: the next start is cold
                log.warning("kv-cache not saved: %s", describe_failure(exc))
            else:
                if saved.enabled:
                    log.info("kv-cache saved %d entries (%d failed)", saved.written, saved.failed)

    async def _simulate_pressure(self, excess: int | None) -> PressureReport:
        if self.monitor is not None:
            self.monitor.simulate(excess)
        return await self._check_pressure()

    async def _corrupt(self, count: int, *, truncate: bool) -> PersistedCorrupted:
        directory = self.settings.directory
        if directory is None:
            return PersistedCorrupted(enabled=False, corrupted=0)
        await self._save()
        damage = functools.partial(corrupt_files, directory, count, truncate=truncate)
        return PersistedCorrupted(
            enabled=True, corrupted=await anyio.to_thread.run_sync(damage, limiter=self._thread)
        )

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

    async def _check_pressure(self) -> PressureReport:
        self._check_queued = False
        if self.monitor is None:
            return PressureReport(
                enabled=False,
                under_pressure=False,
                relieved=False,
                usage=None,
                rss=None,
                mlx_active=None,
                mlx_cache=None,
                usage_after=None,
                high_water=None,
                low_water=None,
                evicted_entries=0,
                evicted_bytes=0,
            )
        outcome = await anyio.to_thread.run_sync(self.monitor.check, limiter=self._thread)
        return _report(outcome, self.monitor)

    async def _save(self) -> CacheSaved:
        if self.settings.directory is None:
            return CacheSaved(enabled=False, written=0, failed=0, removed=0)
        save = functools.partial(
            save_cache, self.cache, self.settings.directory, self.settings.model
        )
        result = await anyio.to_thread.run_sync(save, limiter=self._thread)
        return CacheSaved(
            enabled=True, written=result.written, failed=result.failed, removed=result.removed
        )

    async def _load(self) -> CacheLoaded:
        if self.settings.directory is None:
            return CacheLoaded(enabled=False, loaded=0, dropped=0, skipped=0)
        load = functools.partial(
            load_cache, self.cache, self.settings.directory, self.settings.model
        )
        result = await anyio.to_thread.run_sync(load, limiter=self._thread)
        return CacheLoaded(
            enabled=True, loaded=result.loaded, dropped=result.dropped, skipped=result.skipped
        )

    def _stats(self) -> CacheStats:
        pressure = self.monitor.statistics() if self.monitor is not None else None
        # The message mirrors the store's statistics field for field; converting
        # keeps the two from drifting apart.
        fields = dataclasses.asdict(self.cache.statistics())
        fields["recent_transitions"] = [
            dataclasses.asdict(t) for t in self.cache.breaker.transitions()
        ]
        fields["under_pressure"] = pressure.under_pressure if pressure is not None else False
        fields["pressure_checks"] = pressure.checks if pressure is not None else 0
        fields["memory_usage"] = pressure.last_usage if pressure is not None else None
        return msgspec.convert(fields, CacheStats)


def _report(outcome: PressureOutcome, monitor: MemoryMonitor) -> PressureReport:
    reading = outcome.reading
    return PressureReport(
        enabled=True,
        under_pressure=outcome.under_pressure,
        relieved=outcome.relieved,
        usage=reading.usage,
        rss=reading.rss,
        mlx_active=reading.mlx_active,
        mlx_cache=reading.mlx_cache,
        usage_after=outcome.after.usage if outcome.after is not None else None,
        high_water=monitor.config.high_water,
        low_water=monitor.config.low_water,
        evicted_entries=outcome.evicted_entries,
        evicted_bytes=outcome.evicted_bytes,
    )


def kvcache_child(
    cache: PrefixCache,
    *,
    monitor: MemoryMonitor | None = None,
    settings: KVCacheSettings | None = None,
    child_id: str = "kvcache",
) -> ChildSpec:
    """The child spec of a kv-cache actor whose every incarnation shares ``cache``."""
    return ChildSpec(child_id, lambda: KVCacheActor(cache, monitor=monitor, settings=settings))
