"""The kv-cache: a thread-safe prefix cache for the engine, and the actor that runs it.

The generation engine calls :class:`PrefixCache` (``lookup`` / ``insert``)
directly from its thread; everything else goes through :class:`KVCacheActor`
and the messages of :mod:`actors.kvcache.protocol`.
"""

from actors.kvcache.actor import KVCacheActor, KVCacheSettings, kvcache_child
from actors.kvcache.persistence import LoadResult, SaveResult, load_cache, save_cache
from actors.kvcache.pressure import (
    MemoryMonitor,
    MemoryReading,
    PressureConfig,
    PressureOutcome,
    read_memory,
)
from actors.kvcache.protocol import (
    BreakerStats,
    BreakerTransition,
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
from actors.kvcache.store import CacheStatistics, Evicted, PrefixCache, PrefixHit

__all__ = [
    "BreakerStats",
    "BreakerTransition",
    "CacheCleared",
    "CacheLoaded",
    "CacheSaved",
    "CacheStatistics",
    "CacheStats",
    "CheckPressure",
    "ClearCache",
    "CorruptPersisted",
    "Evicted",
    "FaultsInjected",
    "GetCacheStats",
    "InjectCacheFaults",
    "KVCacheActor",
    "KVCacheSettings",
    "LoadCache",
    "LoadResult",
    "MemoryMonitor",
    "MemoryReading",
    "PersistedCorrupted",
    "PrefixCache",
    "PrefixHit",
    "PressureConfig",
    "PressureOutcome",
    "PressureReport",
    "SaveCache",
    "SaveResult",
    "SimulatePressure",
    "kvcache_child",
    "load_cache",
    "read_memory",
    "save_cache",
]
