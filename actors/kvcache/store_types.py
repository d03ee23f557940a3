"""What the prefix cache returns, raises and counts (see :mod:`actors.kvcache.store`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.kvcache.entries import Gathered
from runtime.breaker import BreakerStatistics


class CacheFault(RuntimeError):
    """A failure inside a cache operation (always caught by the store)."""


class InjectedCacheFault(CacheFault):
    """A fault requested through :meth:`PrefixCache.inject_faults`."""


class ChecksumMismatch(CacheFault):
    """A stored entry's (or block's) metadata no longer matches its checksum."""


@dataclass(frozen=True)
class PrefixHit:
    """A reusable prefix: a private cache covering the first ``length`` prompt tokens."""

    cache: list[Any]
    length: int


@dataclass(frozen=True)
class Evicted:
    """What an eviction or clear removed."""

    entries: int
    nbytes: int


@dataclass(frozen=True)
class StoredEntry:
    """One entry as persistence sees it.

    ``layers()`` puts the entry's layers together (one entry at a time, so a
    save never holds every shared prefix expanded at once); it raises
    :class:`ChecksumMismatch` for an entry that was damaged in memory.
    """

    tokens: list[int]
    namespace: str
    gathered: Gathered | None

    def layers(self) -> list[Any]:
        """The entry's layers, joined now; raise if the entry was damaged."""
        if self.gathered is None:
            raise ChecksumMismatch("the entry failed its checksum in memory")
        return self.gathered.layers()


@dataclass
class Counters:
    """What the store counts under its lock."""

    queries: int = 0
    hits: int = 0
    misses: int = 0
    hit_tokens: int = 0
    query_tokens: int = 0
    inserts: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    superseded: int = 0
    refused_inserts: int = 0
    bypassed: int = 0
    faults: int = 0
    checksum_failures: int = 0


@dataclass(frozen=True)
class CacheStatistics:
    """A snapshot of a :class:`~actors.kvcache.store.PrefixCache`.

    ``misses`` counts every lookup that returned nothing: no usable entry,
    refused by the breaker (also in ``bypassed``) or failed (also in
    ``faults``). ``superseded`` entries were dropped because a longer trimmable
    entry now covers them. ``nbytes`` counts each shared block once;
    ``logical_nbytes`` is what the entries would hold with nothing shared.
    """

    entries: int
    nbytes: int
    logical_nbytes: int
    blocks: int
    block_tokens: int
    max_entries: int
    max_bytes: int
    queries: int
    hits: int
    misses: int
    hit_tokens: int
    query_tokens: int
    """Prompt tokens looked up (vLLM's ``prefix_cache_queries`` counts these)."""
    inserts: int
    evictions: int
    evicted_bytes: int
    superseded: int
    refused_inserts: int
    bypassed: int
    faults: int
    checksum_failures: int
    pending_faults: int
    breaker: BreakerStatistics
