"""The kv-cache: a thread-safe prefix cache for the engine, and the actor that runs it.

The generation engine calls :class:`PrefixCache` (``lookup`` / ``insert``)
directly from its thread; everything else goes through :class:`KVCacheActor`
and the messages of :mod:`actors.kvcache.protocol`.


Names load on first use (PEP 562): the engine process imports the store and
its persistence, and must not pull in the actor (and with it anyio).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.kvcache.actor import (
        KVCacheActor,
        kvcache_child,
    )
    from actors.kvcache.control import CacheControl, KVCacheSettings
    from actors.kvcache.persistence import (
        LoadResult,
        SaveResult,
        load_cache,
        save_cache,
    )
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
    from actors.kvcache.store import (
        CacheStatistics,
        Evicted,
        PrefixCache,
        PrefixHit,
    )

_HOMES = {
    "actors.kvcache.actor": (
        "KVCacheActor",
        "kvcache_child",
    ),
    "actors.kvcache.control": (
        "CacheControl",
        "KVCacheSettings",
    ),
    "actors.kvcache.persistence": (
        "LoadResult",
        "SaveResult",
        "load_cache",
        "save_cache",
    ),
    "actors.kvcache.pressure": (
        "MemoryMonitor",
        "MemoryReading",
        "PressureConfig",
        "PressureOutcome",
        "read_memory",
    ),
    "actors.kvcache.protocol": (
        "BreakerStats",
        "BreakerTransition",
        "CacheCleared",
        "CacheLoaded",
        "CacheSaved",
        "CacheStats",
        "CheckPressure",
        "ClearCache",
        "CorruptPersisted",
        "FaultsInjected",
        "GetCacheStats",
        "InjectCacheFaults",
        "LoadCache",
        "PersistedCorrupted",
        "PressureReport",
        "SaveCache",
        "SimulatePressure",
    ),
    "actors.kvcache.store": (
        "CacheStatistics",
        "Evicted",
        "PrefixCache",
        "PrefixHit",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BreakerStats",
    "BreakerTransition",
    "CacheCleared",
    "CacheControl",
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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'actors.kvcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
