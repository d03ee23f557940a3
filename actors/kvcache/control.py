"""The kv-cache's control plane as plain blocking calls, wherever the cache lives.

:class:`CacheHandler` answers every request of :mod:`actors.kvcache.protocol`
for one :class:`PrefixCache` and its memory monitor. The kv-cache actor calls
it from a worker thread when the cache is in the server's process; the engine
process calls it from its control thread when the cache lives there. No
event loop here: the engine process must not import anyio.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

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
from runtime.errors import describe_failure
from runtime.messages import Message

log = logging.getLogger("troupe.kvcache")

CacheRequest = (
    GetCacheStats
    | CheckPressure
    | ClearCache
    | SaveCache
    | LoadCache
    | InjectCacheFaults
    | SimulatePressure
    | CorruptPersisted
)
"""Every request of the kv-cache protocol."""
CACHE_REQUESTS = (
    GetCacheStats,
    CheckPressure,
    ClearCache,
    SaveCache,
    LoadCache,
    InjectCacheFaults,
    SimulatePressure,
    CorruptPersisted,
)
"""The same, for ``isinstance``."""
CacheAnswer = (
    CacheStats
    | PressureReport
    | CacheCleared
    | CacheSaved
    | CacheLoaded
    | FaultsInjected
    | PersistedCorrupted
)
"""Every reply of the kv-cache protocol."""


@dataclass(frozen=True)
class KVCacheSettings:
    """How the kv-cache's control plane runs."""

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


class CacheHandler:
    """Answers the kv-cache protocol for one cache (blocking; one caller at a time)."""

    def __init__(
        self,
        cache: PrefixCache,
        monitor: MemoryMonitor | None = None,
        settings: KVCacheSettings | None = None,
    ) -> None:
        self.cache = cache
        self.monitor = monitor
        self.settings = settings or KVCacheSettings()

    def answer(self, message: Message) -> Message:  # noqa: PLR0911 - one case per request
        """The reply to one request; ``TypeError`` for anything else."""
        match message:
            case GetCacheStats():
                return self.stats()
            case CheckPressure():
                return self.check_pressure()
            case ClearCache():
                cleared = self.cache.clear()
                return CacheCleared(entries=cleared.entries, nbytes=cleared.nbytes)
            case SaveCache():
                return self.save()
            case LoadCache():
                return self.load()
            case InjectCacheFaults(count=count):
                return FaultsInjected(pending=self.cache.inject_faults(max(0, count)))
            case SimulatePressure(excess_bytes=excess):
                if self.monitor is not None:
                    self.monitor.simulate(excess)
                return self.check_pressure()
            case CorruptPersisted(count=count, truncate=truncate):
                return self.corrupt(count, truncate=truncate)
        raise TypeError(f"not a kv-cache request: {type(message).__name__}")

    def restore(self) -> None:
        """Load persisted entries into an empty cache (a warm cache is kept as it is)."""
        if not self.settings.load_on_start or self.cache.statistics().entries:
            return
        try:
            loaded = self.load()
        except OSError as exc:  # an unreadable directory: serve with a cold cache
            log.warning("kv-cache not restored: %s", describe_failure(exc))
            return
        if loaded.enabled:
            log.info(
                "kv-cache restored %d entries (%d bad files dropped, %d skipped)",
                loaded.loaded,
                loaded.dropped,
                loaded.skipped,
            )

    def save_on_stop(self) -> None:
        """Persist the cache on a clean shutdown, if configured to."""
        if not self.settings.save_on_stop:
            return
        try:
            saved = self.save()
        except OSError as exc:  # a full or read-only disk: the next start is cold
            log.warning("kv-cache not saved: %s", describe_failure(exc))
            return
        if saved.enabled:
            log.info("kv-cache saved %d entries (%d failed)", saved.written, saved.failed)

    def save(self) -> CacheSaved:
        """Write the cache to its directory."""
        if self.settings.directory is None:
            return CacheSaved(enabled=False, written=0, failed=0, removed=0)
        result = save_cache(self.cache, self.settings.directory, self.settings.model)
        return CacheSaved(
            enabled=True, written=result.written, failed=result.failed, removed=result.removed
        )

    def load(self) -> CacheLoaded:
        """Read the cache's directory into the cache."""
        if self.settings.directory is None:
            return CacheLoaded(enabled=False, loaded=0, dropped=0, skipped=0)
        result = load_cache(self.cache, self.settings.directory, self.settings.model)
        return CacheLoaded(
            enabled=True, loaded=result.loaded, dropped=result.dropped, skipped=result.skipped
        )

    def corrupt(self, count: int, *, truncate: bool) -> PersistedCorrupted:
        """Save, then damage ``count`` persisted files (a drill)."""
        directory = self.settings.directory
        if directory is None:
            return PersistedCorrupted(enabled=False, corrupted=0)
        self.save()
        return PersistedCorrupted(
            enabled=True, corrupted=corrupt_files(directory, count, truncate=truncate)
        )

    def check_pressure(self) -> PressureReport:
        """Measure memory and shed cache entries above the high-water mark."""
        if self.monitor is None:
            return _no_monitor()
        return _report(self.monitor.check(), self.monitor)

    def stats(self) -> CacheStats:
        """The cache's counters, its breaker and the pressure flag."""
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


def _no_monitor() -> PressureReport:
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
