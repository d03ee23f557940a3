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

Storage dedupes: attention layers are cut into blocks named by chain hashes
(:mod:`actors.kvcache.blocks`), so entries that share a prefix (a system
prompt, earlier turns) hold its blocks once; the byte budget counts each
block once. Entries are still the unit of reuse and of LRU eviction, and an
evicted entry frees the blocks no other entry uses.

Entries belong to a namespace (a tenant, optionally salted per request; the
default ``""`` is the one namespace of a server without keys): a lookup only
sees entries of its own namespace, so a cached prefix never tells one tenant
what another sent.

The cache must never take the engine down. Lookups and inserts go through a
:class:`~runtime.breaker.CircuitBreaker`: an exception inside either is
caught, logged (sanitized), counted and reported as a fault; enough faults in
a row open the breaker and requests are served uncached until probes succeed
again. A lookup's chosen entry is verified against a checksum of its metadata
first; a mismatch drops only that entry (a damaged block: the entries using
it) and counts as a fault.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from actors.kvcache.blocks import (
    DEFAULT_BLOCK_TOKENS,
    BlockTable,
    LayerKind,
    Leaves,
    chain_hashes,
    cut,
    evaluate,
    layer_kinds,
    layout_of,
    piece_nbytes,
)
from actors.kvcache.entries import (
    BlockChain,
    Entry,
    Gathered,
    best_entry,
    damaged_blocks,
    entry_checksum,
    gather,
    tamper,
    whole_entry,
)
from actors.kvcache.layers import (
    cache_nbytes,
    check_length,
    key_length,
    key_tokens,
    materialize,
    token_key,
)
from actors.kvcache.store_types import (
    CacheFault,
    CacheStatistics,
    ChecksumMismatch,
    Counters,
    Evicted,
    InjectedCacheFault,
    PrefixHit,
    StoredEntry,
)
from runtime.breaker import CircuitBreaker
from runtime.errors import describe_failure

__all__ = [
    "CacheFault",
    "CacheStatistics",
    "ChecksumMismatch",
    "Evicted",
    "InjectedCacheFault",
    "PrefixCache",
    "PrefixHit",
    "StoredEntry",
]

log = logging.getLogger("troupe.kvcache")

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 32
"""Sequences kept by default: a few dozen conversations' worth of reuse."""
DEFAULT_MAX_BYTES = 2 * 1024**3
"""Bytes kept by default (2 GiB); the memory monitor evicts further under pressure."""


class PrefixCache:
    """Thread-safe LRU prefix cache bounded by entry count and bytes."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        breaker: CircuitBreaker | None = None,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
    ) -> None:
        if max_entries < 1 or max_bytes < 0:
            raise ValueError("a prefix cache needs max_entries >= 1 and max_bytes >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.breaker = breaker or CircuitBreaker()
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], Entry] = OrderedDict()  # oldest use first
        self._blocks = BlockTable(block_tokens)
        self._own_nbytes = 0  # whole layers and tails; blocks count in the table
        self._logical_nbytes = 0
        self._counters = Counters()
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
        """Bytes currently held, each shared block once."""
        with self._lock:
            return self._held()

    def evict_to_bytes(self, nbytes: int) -> Evicted:
        """Evict least recently used entries until at most ``nbytes`` are held."""
        with self._lock:
            return self._evict_while(lambda: self._held() > max(0, nbytes))

    def clear(self) -> Evicted:
        """Drop every entry."""
        with self._lock:
            dropped = Evicted(len(self._entries), self._held())
            self._entries.clear()
            self._blocks.clear()
            self._own_nbytes = self._logical_nbytes = 0
        return dropped

    def statistics(self) -> CacheStatistics:
        """A consistent snapshot of the counters, the breaker's included."""
        breaker = self.breaker.statistics()  # outside our lock: never hold both
        with self._lock:
            return CacheStatistics(
                entries=len(self._entries),
                nbytes=self._held(),
                logical_nbytes=self._logical_nbytes,
                blocks=len(self._blocks),
                block_tokens=self._blocks.block_tokens,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
                pending_faults=self._pending_faults,
                breaker=breaker,
                **asdict(self._counters),
            )

    def snapshot(self) -> list[StoredEntry]:
        """The entries, least recently used first (for persistence).

        Each entry's arrays are referenced now and joined only when persistence
        asks for its layers; an entry that fails its checksums comes without.
        """
        with self._lock:
            return [
                StoredEntry(key_tokens(e.key), e.namespace, self._gather_if_intact(e))
                for e in self._entries.values()
            ]

    def inject_faults(self, count: int) -> int:
        """Make the next ``count`` lookups or inserts fail; return how many are pending."""
        if count < 0:
            raise ValueError("the number of faults to inject must not be negative")
        with self._lock:
            self._pending_faults += count
            return self._pending_faults

    def corrupt_entry(self, tokens: Sequence[int] | None = None, namespace: str = "") -> bool:
        """Tamper with an entry's metadata so that a checksum fails; return if one was found.

        Picks the entry for exactly ``tokens`` (in ``namespace``), or the most
        recently used one. A chained entry loses a position from its first
        block (every entry sharing that block fails with it) or from its tail.
        """
        with self._lock:
            if tokens is not None:
                entry = self._entries.get((namespace, token_key(tokens)))
            else:
                entry = next(reversed(self._entries.values()), None)
            if entry is None:
                return False
            tamper(entry, self._blocks)
            return True

    # -- internals ---------------------------------------------------------------

    def _held(self) -> int:
        return self._own_nbytes + self._blocks.nbytes

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
            choice = best_entry(self._entries.values(), namespace, key, wanted)
            if choice is None:
                return None
            entry, usable = choice
            self._verify(entry, usable)
            self._entries.move_to_end(entry.slot)
            gathered = gather(entry, self._blocks, usable)
        # Stored arrays are never mutated, so the copy (or join) needs no lock.
        return PrefixHit(gathered.layers(), usable)

    def _verify(self, entry: Entry, usable: int) -> None:
        """Raise (dropping what is damaged) unless the entry and its blocks pass their checksums."""
        if entry_checksum(entry.namespace, entry.key, entry.layout) != entry.checksum:
            self._drop(entry)
            self._counters.checksum_failures += 1
            raise ChecksumMismatch("a kv-cache entry failed its checksum and was dropped")
        damaged = damaged_blocks(entry, self._blocks, usable)
        if damaged:
            self._drop_users_of(damaged)
            self._counters.checksum_failures += 1
            raise ChecksumMismatch("a kv-cache block failed its checksum and was dropped")

    def _gather_if_intact(self, entry: Entry) -> Gathered | None:
        if entry_checksum(entry.namespace, entry.key, entry.layout) != entry.checksum:
            return None
        if damaged_blocks(entry, self._blocks, entry.length):
            return None
        return gather(entry, self._blocks, entry.length)

    def _insert(self, tokens: Sequence[int], cache: Sequence[Any], namespace: str) -> bool:
        key = token_key(tokens)
        layers = list(cache)
        length = key_length(key)
        check_length(layers, length)
        kinds = layer_kinds(layers)
        if length == 0:
            return self._refuse()
        if kinds is None:
            return self._insert_whole(namespace, key, layers)
        leaves = [kind.leaves(layer) for kind, layer in zip(kinds, layers, strict=True)]
        return self._insert_chain(namespace, key, kinds, leaves)

    def _refuse(self) -> bool:
        with self._lock:
            self._counters.refused_inserts += 1
        return False

    def _insert_whole(self, namespace: str, key: bytes, layers: list[Any]) -> bool:
        nbytes = cache_nbytes(layers)
        if nbytes > self.max_bytes:
            return self._refuse()
        materialize(layers)  # on the caller's thread, outside the lock
        with self._lock:
            self._admit(whole_entry(namespace, key, layers, nbytes))
        return True

    def _insert_chain(
        self, namespace: str, key: bytes, kinds: tuple[LayerKind, ...], leaves: list[Leaves]
    ) -> bool:
        """Cut the blocks no entry holds yet (outside the lock), then link the entry."""
        logical = piece_nbytes(tuple(leaves))
        if logical > self.max_bytes:
            return self._refuse()
        step, length = self._blocks.block_tokens, key_length(key)
        names = chain_hashes(key, namespace, kinds, layout_of(kinds, leaves), step)
        with self._lock:
            missing = self._blocks.pin(names)
        absent = set(missing)
        pinned = [name for index, name in enumerate(names) if index not in absent]
        try:
            fresh = {i: cut(leaves, i * step, (i + 1) * step) for i in missing}
            tail = cut(leaves, len(names) * step, length) if length % step else None
            evaluate([*fresh.values(), *([tail] if tail is not None else [])])
        except BaseException:
            with self._lock:
                self._blocks.release(pinned)
            raise
        layout = BlockChain(kinds, names, tail)
        own = piece_nbytes(tail) if tail is not None else 0
        digest = entry_checksum(namespace, key, layout)
        entry = Entry(namespace, key, layout, own, logical, digest, True)
        with self._lock:
            for index, piece in fresh.items():
                self._blocks.add(names[index], piece)
            self._admit(entry)
        return True

    def _admit(self, entry: Entry) -> None:
        """Link a new entry (under the lock), replacing its twin, then evict to the limits."""
        previous = self._entries.pop(entry.slot, None)
        if previous is not None:
            self._forget(previous)
        self._entries[entry.slot] = entry
        self._own_nbytes += entry.nbytes
        self._logical_nbytes += entry.logical_nbytes
        self._counters.inserts += 1
        if entry.trimmable:
            self._drop_prefixes_of(entry)
        self._evict_while(
            lambda: len(self._entries) > self.max_entries or self._held() > self.max_bytes
        )

    def _drop_prefixes_of(self, entry: Entry) -> None:
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

    def _drop_users_of(self, damaged: list[bytes]) -> None:
        """Drop damaged blocks and every entry that reads one of them."""
        bad = set(damaged)
        for entry in list(self._entries.values()):
            if isinstance(entry.layout, BlockChain) and bad.intersection(entry.layout.blocks):
                self._drop(entry)
        for name in damaged:
            self._blocks.discard(name)

    def _evict_while(self, over: Callable[[], bool]) -> Evicted:
        entries = 0
        before = self._held()
        while self._entries and over():
            _, victim = self._entries.popitem(last=False)
            self._forget(victim)
            entries += 1
        nbytes = before - self._held()
        self._counters.evictions += entries
        self._counters.evicted_bytes += nbytes
        return Evicted(entries, nbytes)

    def _drop(self, entry: Entry) -> None:
        if self._entries.pop(entry.slot, None) is not None:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Release what an entry (already unlinked) held."""
        self._own_nbytes -= entry.nbytes
        self._logical_nbytes -= entry.logical_nbytes
        if isinstance(entry.layout, BlockChain):
            self._blocks.release(entry.layout.blocks)
