"""Messages of the kv-cache actor (the control plane; KV tensors never travel here).

Every request is answered by one reply:

=====================  ==================
request                reply
=====================  ==================
``GetCacheStats``      ``CacheStats``
``CheckPressure``      ``PressureReport``
``ClearCache``         ``CacheCleared``
``SaveCache``          ``CacheSaved``
``LoadCache``          ``CacheLoaded``
``InjectCacheFaults``  ``FaultsInjected``
``SimulatePressure``   ``PressureReport``
``CorruptPersisted``   ``PersistedCorrupted``
=====================  ==================

Times are monotonic seconds of the actor system's clock unless named ``wall``.
"""

from __future__ import annotations

from runtime.breaker import BreakerState
from runtime.messages import Message


class GetCacheStats(Message, frozen=True, kw_only=True):
    """Ask for the cache's counters, its breaker and the memory-pressure flag."""


class BreakerTransition(Message, frozen=True, kw_only=True):
    """One change of the cache's circuit breaker."""

    source: BreakerState
    target: BreakerState
    at: float
    reason: str


class BreakerStats(Message, frozen=True, kw_only=True):
    """The cache's circuit breaker."""

    state: BreakerState
    enabled: bool
    consecutive_faults: int
    consecutive_successes: int
    total_faults: int
    transitions: int
    opened_at: float | None
    cooldown: float


class CacheStats(Message, frozen=True, kw_only=True):
    """Counters of the prefix cache (see ``actors.kvcache.store.CacheStatistics``)."""

    entries: int
    nbytes: int
    """Bytes held, each shared block once."""
    logical_nbytes: int = 0
    """Bytes the entries would hold with nothing shared."""
    blocks: int = 0
    """Shared blocks held."""
    block_tokens: int = 0
    """Positions per block."""
    max_entries: int
    max_bytes: int
    queries: int
    hits: int
    misses: int
    hit_tokens: int
    query_tokens: int = 0
    """Prompt tokens looked up."""
    inserts: int
    evictions: int
    evicted_bytes: int
    superseded: int
    refused_inserts: int
    bypassed: int
    faults: int
    checksum_failures: int
    pending_faults: int
    breaker: BreakerStats
    recent_transitions: list[BreakerTransition]
    """The breaker's latest transitions, oldest first (a bounded history)."""
    under_pressure: bool
    pressure_checks: int
    memory_usage: int | None
    """Bytes the last pressure check measured, or ``None``."""


class CheckPressure(Message, frozen=True, kw_only=True):
    """Check memory now (the actor also does so periodically)."""


class PressureReport(Message, frozen=True, kw_only=True):
    """What a pressure check saw and did; ``enabled`` is false without a monitor."""

    enabled: bool
    under_pressure: bool
    relieved: bool
    usage: int | None
    rss: int | None
    mlx_active: int | None
    mlx_cache: int | None
    usage_after: int | None
    high_water: int | None
    low_water: int | None
    evicted_entries: int
    evicted_bytes: int


class ClearCache(Message, frozen=True, kw_only=True):
    """Drop every cached entry (persisted files stay until the next save)."""


class CacheCleared(Message, frozen=True, kw_only=True):
    """What a clear dropped."""

    entries: int
    nbytes: int


class SaveCache(Message, frozen=True, kw_only=True):
    """Write the cache to the configured directory."""


class CacheSaved(Message, frozen=True, kw_only=True):
    """Outcome of a save; ``enabled`` is false when no directory is configured."""

    enabled: bool
    written: int
    failed: int
    removed: int


class LoadCache(Message, frozen=True, kw_only=True):
    """Load persisted entries from the configured directory into the cache."""


class CacheLoaded(Message, frozen=True, kw_only=True):
    """Outcome of a load; ``dropped`` bad files were deleted."""

    enabled: bool
    loaded: int
    dropped: int
    skipped: int


class InjectCacheFaults(Message, frozen=True, kw_only=True):
    """Make the next ``count`` cache operations fail (tests, operator drills)."""

    count: int


class FaultsInjected(Message, frozen=True, kw_only=True):
    """How many injected faults are now pending."""

    pending: int


class SimulatePressure(Message, frozen=True, kw_only=True):
    """Drill: read memory ``excess_bytes`` above the high-water mark, then check now.

    ``None`` ends the drill; the check that follows reads real memory again.
    """

    excess_bytes: int | None


class CorruptPersisted(Message, frozen=True, kw_only=True):
    """Drill: save the cache, then damage ``count`` of its files (tamper or truncate)."""

    count: int = 1
    truncate: bool = False
    """Cut files in half instead of flipping bytes inside them."""


class PersistedCorrupted(Message, frozen=True, kw_only=True):
    """How many persisted files were damaged (0 without a cache directory)."""

    enabled: bool
    corrupted: int
