"""The KV-cache data plane: a thread-safe prefix cache of per-layer mlx-lm caches.

The generation engine calls :class:`PrefixCache` directly from its own thread:
KV tensors are large in-process MLX arrays and never travel in messages. The
kv-cache actor is the control plane around it (statistics, memory pressure,
persistence, fault injection).

Reuse follows mlx-lm's ``LRUPromptCache``: a lookup returns the longest cached
prefix of the prompt that still leaves at least one token to prefill (the
model needs one to produce logits), as a private copy. An entry that is a
prefix of the prompt is used as it is; an exact entry, or one that diverges
from the prompt or runs past it, is used through a copy trimmed back to the
shared part, when its layers can be trimmed.

Entries belong to a namespace (a tenant, optionally salted per request; the
default ``""`` is the one namespace of a server without keys): a lookup only
sees entries of its own namespace, so a cached prefix never tells one tenant
what another sent.

The cache must never take the engine down. Lookups and inserts go through a
:class:`~runtime.breaker.CircuitBreaker`: an exception inside either is
caught, logged (sanitized), counted and reported as a fault; enough faults in
a row open the breaker and requests are served uncached until probes succeed
again. A lookup's chosen entry is verified against a checksum of its metadata
first; a mismatch drops only that entry and counts as a fault.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from actors.kvcache.layers import (
    cache_nbytes,
    check_length,
    checksum,
    common_prefix,
    is_trimmable,
    key_length,
    key_tokens,
    materialize,
    private_copy,
    token_key,
)
from runtime.breaker import BreakerStatistics, CircuitBreaker
from runtime.errors import describe_failure

log = logging.getLogger("troupe.kvcache")

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 32
"""Sequences kept by default: a few dozen conversations' worth of reuse."""
DEFAULT_MAX_BYTES = 2 * 1024**3
"""Bytes kept by default (2 GiB); the memory monitor evicts further under pressure."""


class CacheFault(RuntimeError):
    """A failure inside a cache operation (always caught by the store)."""


class InjectedCacheFault(CacheFault):
    """A fault requested through :meth:`PrefixCache.inject_faults`."""


class ChecksumMismatch(CacheFault):
    """A stored entry's metadata no longer matches its checksum."""


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
    """One entry as persistence sees it; ``cache`` is the stored object, read only."""

    tokens: list[int]
    cache: list[Any]
    checksum: str
    namespace: str = ""


@dataclass
class _Counters:
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
    """A snapshot of a :class:`PrefixCache`.

    ``misses`` counts every lookup that returned nothing: no usable entry,
    refused by the breaker (also in ``bypassed``) or failed (also in
    ``faults``). ``superseded`` entries were dropped because a longer trimmable
    entry now covers them.
    """

    entries: int
    nbytes: int
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


@dataclass
class _Entry:
    namespace: str
    key: bytes
    cache: list[Any]
    nbytes: int
    checksum: str
    trimmable: bool

    @property
    def length(self) -> int:
        return key_length(self.key)

    @property
    def slot(self) -> tuple[str, bytes]:
        return self.namespace, self.key


class PrefixCache:
    """Thread-safe LRU prefix cache bounded by entry count and bytes."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 0:
            raise ValueError("a prefix cache needs max_entries >= 1 and max_bytes >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.breaker = breaker or CircuitBreaker()
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()  # oldest use first
        self._nbytes = 0
        self._counters = _Counters()
        self._pending_faults = 0

    # -- the engine's API: never raises --------------------------------------

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> PrefixHit | None:
        """The longest reusable prefix of ``tokens`` in ``namespace`` as a private copy.

        The hit leaves at least one token to prefill: ``hit.length < len(tokens)``.
        Only entries inserted under the same namespace are candidates.
        """
        hit = self._guarded("lookup", lambda: self._lookup(tokens, namespace), None)
        with self._lock:
            self._counters.queries += 1
            self._counters.query_tokens += len(tokens)
            if hit is None:
                self._counters.misses += 1
            else:
                self._counters.hits += 1
                self._counters.hit_tokens += hit.length
        return hit

    def insert(self, tokens: Sequence[int], cache: Sequence[Any], namespace: str = "") -> bool:
        """Store ``cache`` (covering exactly ``len(tokens)`` positions) in ``namespace``.

        Return whether it was kept.

        The store takes ownership: the caller must not use ``cache`` afterwards.
        A cache bigger than ``max_bytes`` on its own is refused; others evict
        least recently used entries until both limits hold.
        """
        return self._guarded("insert", lambda: self._insert(tokens, cache, namespace), False)

    # -- the control plane's API -----------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        with self._lock:
            return self._nbytes

    def evict_to_bytes(self, nbytes: int) -> Evicted:
        """Evict least recently used entries until at most ``nbytes`` are held."""
        with self._lock:
            return self._evict_while(lambda: self._nbytes > max(0, nbytes))

    def clear(self) -> Evicted:
        """Drop every entry."""
        with self._lock:
            dropped = Evicted(len(self._entries), self._nbytes)
            self._entries.clear()
            self._nbytes = 0
        return dropped

    def statistics(self) -> CacheStatistics:
        """A consistent snapshot of the counters, the breaker's included."""
        breaker = self.breaker.statistics()  # outside our lock: never hold both
        with self._lock:
            return CacheStatistics(
                entries=len(self._entries),
                nbytes=self._nbytes,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
                pending_faults=self._pending_faults,
                breaker=breaker,
                **asdict(self._counters),
            )

    def snapshot(self) -> list[StoredEntry]:
        """The entries, least recently used first (for persistence; do not mutate)."""
        with self._lock:
            entries = list(self._entries.values())
        return [StoredEntry(key_tokens(e.key), e.cache, e.checksum, e.namespace) for e in entries]

    def inject_faults(self, count: int) -> int:
        """Make the next ``count`` lookups or inserts fail; return how many are pending."""
        if count < 0:
            raise ValueError("the number of faults to inject must not be negative")
        with self._lock:
            self._pending_faults += count
            return self._pending_faults

    def corrupt_entry(self, tokens: Sequence[int] | None = None, namespace: str = "") -> bool:
        """Tamper with an entry's metadata so that its checksum fails; return if one was found.

        Picks the entry for exactly ``tokens`` (in ``namespace``), or the most recently used one.
        """
        with self._lock:
            if tokens is not None:
                entry = self._entries.get((namespace, token_key(tokens)))
            else:
                entry = next(reversed(self._entries.values()), None)
            if entry is None:
                return False
            first = entry.cache[0]
            if isinstance(getattr(first, "offset", None), int):
                first.offset += 1  # as a writer through an alias would have done
            else:
                entry.checksum = "0" * len(entry.checksum)
            return True

    # -- internals ---------------------------------------------------------------

    def _guarded(self, operation: str, action: Callable[[], T], fallback: T) -> T:
        """Run ``action`` behind the breaker; any exception becomes a counted fault."""
        if not self.breaker.allow():
            with self._lock:
                self._counters.bypassed += 1
            return fallback
        try:
            self._take_injected_fault()
            result = action()
        except Exception as exc:
            with self._lock:
                self._counters.faults += 1
            log.warning("kv-cache %s failed, served uncached: %s", operation, describe_failure(exc))
            self.breaker.record_fault()
            return fallback
        self.breaker.record_success()
        return result

    def _take_injected_fault(self) -> None:
        with self._lock:
            injected = self._pending_faults > 0
            if injected:
                self._pending_faults -= 1
        if injected:
            raise InjectedCacheFault("injected kv-cache fault")

    def _lookup(self, tokens: Sequence[int], namespace: str) -> PrefixHit | None:
        key = token_key(tokens)
        wanted = key_length(key)
        with self._lock:
            choice = self._choose(namespace, key, wanted)
            if choice is None:
                return None
            entry, usable = choice
            if checksum(entry.key, entry.cache, entry.namespace) != entry.checksum:
                self._drop(entry)
                self._counters.checksum_failures += 1
                raise ChecksumMismatch("a kv-cache entry failed its checksum and was dropped")
            self._entries.move_to_end(entry.slot)
        # Stored caches are never mutated, so the (cheap) copy needs no lock.
        copied = private_copy(entry.cache, usable, entry.length - usable)
        return PrefixHit(copied, usable)

    def _choose(self, namespace: str, key: bytes, wanted: int) -> tuple[_Entry, int] | None:
        """The entry giving the longest reusable prefix; on a tie, the shortest entry.

        Entries of other namespaces are never candidates: whether another tenant
        sent a prompt must not show in this one's time to first token.
        """
        best: tuple[_Entry, int] | None = None
        for entry in self._entries.values():
            if entry.namespace != namespace:
                continue
            shared = common_prefix(key, entry.key)
            if shared == entry.length < wanted:
                usable = shared  # a proper prefix of the prompt: used as it is
            elif entry.trimmable:
                usable = min(shared, wanted - 1)  # trimmed back, one token left
            else:
                continue
            if usable < 1:
                continue
            if best is None or (usable, -entry.length) > (best[1], -best[0].length):
                best = (entry, usable)
        return best

    def _insert(self, tokens: Sequence[int], cache: Sequence[Any], namespace: str) -> bool:
        key = token_key(tokens)
        layers = list(cache)
        check_length(layers, key_length(key))
        nbytes = cache_nbytes(layers)
        if key_length(key) == 0 or nbytes > self.max_bytes:
            with self._lock:
                self._counters.refused_inserts += 1
            return False
        materialize(layers)  # on the caller's thread, outside the lock
        entry = _Entry(
            namespace, key, layers, nbytes, checksum(key, layers, namespace), is_trimmable(layers)
        )
        with self._lock:
            previous = self._entries.pop(entry.slot, None)
            if previous is not None:
                self._nbytes -= previous.nbytes
            self._entries[entry.slot] = entry
            self._nbytes += nbytes
            self._counters.inserts += 1
            if entry.trimmable:
                self._drop_prefixes_of(entry)
            self._evict_while(
                lambda: len(self._entries) > self.max_entries or self._nbytes > self.max_bytes
            )
        return True

    def _drop_prefixes_of(self, entry: _Entry) -> None:
        # A trimmable entry serves every prompt its prefixes would (trimmed), so
        # they only take memory; mlx-lm's LRUPromptCache drops them the same way.
        for other in list(self._entries.values()):
            if (
                other is not entry
                and other.namespace == entry.namespace
                and entry.key.startswith(other.key)
            ):
                self._drop(other)
                self._counters.superseded += 1

    def _evict_while(self, over: Callable[[], bool]) -> Evicted:
        entries = nbytes = 0
        while self._entries and over():
            _, victim = self._entries.popitem(last=False)
            self._nbytes -= victim.nbytes
            entries += 1
            nbytes += victim.nbytes
        self._counters.evictions += entries
        self._counters.evicted_bytes += nbytes
        return Evicted(entries, nbytes)

    def _drop(self, entry: _Entry) -> None:
        if self._entries.pop(entry.slot, None) is not None:
            self._nbytes -= entry.nbytes
