"""The prefix cache: reuse rules, budgets, private copies, checksums, faults and its breaker.

Caches are real mlx-lm ``KVCache`` layers whose keys hold, at each position,
the token id seen there, so a hit's content proves which tokens it covers.
They are sized as the engine's are (``BatchKVCache.extract``: no slack past
the last position). Shared blocks have tests of their own
(``test_kvcache_blocks``); here entries are mostly shorter than a block.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.models.cache import ArraysCache, KVCache

from actors.kvcache.layers import common_prefix, token_key
from actors.kvcache.store import PrefixCache, PrefixHit
from runtime import ManualClock
from runtime.breaker import BreakerConfig, BreakerState, CircuitBreaker

pytestmark = pytest.mark.timeout(60)

HEADS = 2
new_layer: Any = KVCache  # mlx-lm leaves KVCache unannotated


def kv(tokens: Sequence[int], layers: int = 2, head_dim: int = 4) -> list[Any]:
    """Per-layer caches over ``tokens``; layer ``i`` stores ``token + i`` at each position."""
    column = mx.array(list(tokens), dtype=mx.float32).reshape(1, 1, len(tokens), 1)
    block = mx.broadcast_to(column, (1, HEADS, len(tokens), head_dim))
    return [
        new_layer.from_state((block + layer, block - layer, len(tokens))) for layer in range(layers)
    ]


def covered(cache: list[Any], length: int) -> list[int]:
    """The token ids a cache's first layer holds in its first ``length`` positions."""
    return [int(v) for v in cache[0].keys[0, 0, :length, 0].tolist()]


def check_hit(hit: PrefixHit | None, query: Sequence[int], length: int) -> PrefixHit:
    assert hit is not None
    assert hit.length == length
    assert all(getattr(layer, "offset", length) == length for layer in hit.cache)
    assert covered(hit.cache, length) == list(query[:length])
    return hit


def entry_bytes(length: int = 2, layers: int = 2, head_dim: int = 4) -> int:
    """Bytes an entry of ``length`` positions holds."""
    return sum(c.nbytes for c in kv([1] * length, layers, head_dim))


def test_the_longest_prefix_is_reused_and_at_least_one_token_is_left() -> None:
    store = PrefixCache()
    assert store.insert([1, 2, 3, 4, 5], kv([1, 2, 3, 4, 5]))
    assert store.insert([1, 2, 3], kv([1, 2, 3]))  # shorter after longer: both kept
    assert store.statistics().entries == 2
    check_hit(store.lookup([1, 2, 3, 4, 5, 6, 7]), [1, 2, 3, 4, 5, 6, 7], 5)  # a prefix, as is
    check_hit(store.lookup([1, 2, 3, 4, 5]), [1, 2, 3, 4, 5], 4)  # exact: trimmed by one
    check_hit(store.lookup([1, 2, 3, 4, 9, 9]), [1, 2, 3, 4, 9, 9], 4)  # diverging: trimmed
    check_hit(store.lookup([1, 2, 3]), [1, 2, 3], 2)
    check_hit(store.lookup([1, 2, 3, 7]), [1, 2, 3, 7], 3)
    check_hit(store.lookup([1, 2]), [1, 2], 1)  # a longer entry trimmed down to one token
    for query in ([1], [2, 3], [], [9, 1, 2, 3]):
        assert store.lookup(query) is None
    stats = store.statistics()
    assert (stats.queries, stats.hits, stats.misses, stats.hit_tokens) == (10, 6, 4, 19)


def test_on_a_tie_the_entry_needing_no_trim_wins() -> None:
    store = PrefixCache()
    store.insert([1, 2, 3, 4], kv([1, 2, 3, 4]))
    store.insert([1, 2], kv([1, 2]))
    check_hit(store.lookup([1, 2, 3, 4, 5]), [1, 2, 3, 4, 5], 4)  # [1, 2, 3, 4] most recent
    hit = check_hit(store.lookup([1, 2, 8]), [1, 2, 8], 2)
    assert [layer.offset for layer in hit.cache] == [2, 2]
    # The [1, 2] entry served it (and so became the most recently used).
    assert [e.tokens for e in store.snapshot()] == [[1, 2, 3, 4], [1, 2]]


def test_a_lookup_only_sees_entries_of_its_own_namespace() -> None:
    store = PrefixCache()
    assert store.insert([1, 2, 3, 4], kv([1, 2, 3, 4]), "alice")
    assert store.insert([1, 2], kv([1, 2]), "bob")  # bob's prefix survives alice's entry
    assert store.lookup([1, 2, 3, 4, 5], "bob") is not None
    check_hit(store.lookup([1, 2, 3, 4, 5], "bob"), [1, 2, 3, 4, 5], 2)
    check_hit(store.lookup([1, 2, 3, 4, 5], "alice"), [1, 2, 3, 4, 5], 4)
    assert store.lookup([1, 2, 3, 4, 5]) is None  # the keyless namespace holds nothing
    assert store.lookup([1, 2, 3, 4, 5], "carol") is None
    assert store.insert([1, 2, 3, 4], kv([1, 2, 3, 4]), "bob")  # same tokens, two entries
    assert store.statistics().entries == 2
    assert {e.namespace for e in store.snapshot()} == {"alice", "bob"}
    assert store.corrupt_entry([1, 2, 3, 4], "alice")
    assert store.lookup([1, 2, 3, 4, 5], "alice") is None  # its checksum failed: dropped
    check_hit(store.lookup([1, 2, 3, 4, 5], "bob"), [1, 2, 3, 4, 5], 4)


def test_a_trimmable_entry_supersedes_its_prefixes() -> None:
    store = PrefixCache()
    store.insert([1, 2], kv([1, 2]))
    store.insert([1, 2, 3], kv([1, 2, 3]))
    store.insert([5, 6], kv([5, 6]))
    store.insert([1, 2, 3, 4], kv([1, 2, 3, 4]))
    stats = store.statistics()
    assert (stats.entries, stats.superseded, stats.evictions) == (2, 2, 0)
    check_hit(store.lookup([1, 2, 3]), [1, 2, 3], 2)


def test_a_non_trimmable_cache_is_only_reused_as_a_proper_prefix() -> None:
    def hybrid(tokens: list[int]) -> list[Any]:
        state = ArraysCache(1)
        state[0] = mx.full((1, 4), float(sum(tokens)))
        return [*kv(tokens, layers=1), state]

    store = PrefixCache()
    store.insert([1, 2, 3], hybrid([1, 2, 3]))
    assert store.lookup([1, 2, 3]) is None  # exact: would need a trim
    assert store.lookup([1, 2, 4, 4]) is None  # diverging: would need a trim
    hit = check_hit(store.lookup([1, 2, 3, 4]), [1, 2, 3, 4], 3)
    assert hit.cache[1][0].tolist() == [[6.0] * 4]


@pytest.mark.parametrize("block_tokens", [1, 2, 64])
def test_lookups_return_private_copies_that_never_alias_the_store(block_tokens: int) -> None:
    store = PrefixCache(block_tokens=block_tokens)
    store.insert([1, 2, 3], kv([1, 2, 3]))
    for query, length in (([1, 2, 3, 4], 3), ([1, 2, 3], 2), ([1, 5], 1)):
        hit = check_hit(store.lookup(query), query, length)
        # The engine writes into its copy: in place and by extending it.
        hit.cache[0].keys[..., 0, :] = -1.0
        hit.cache[1].values[..., :, :] = -1.0
        extra = mx.full((1, HEADS, 2, 4), 9.0)
        hit.cache[0].update_and_fetch(extra, extra)
        check_hit(store.lookup([1, 2, 3, 4]), [1, 2, 3, 4], 3)
    saved = store.snapshot()[0].layers()
    assert [layer.offset for layer in saved] == [3, 3]
    assert covered(saved, 3) == [1, 2, 3]
    assert saved[1].values[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]


def test_least_recently_used_entries_go_first_under_the_entry_limit() -> None:
    store = PrefixCache(max_entries=2)
    store.insert([1, 1], kv([1, 1]))
    store.insert([2, 2], kv([2, 2]))
    assert store.lookup([1, 1, 0]) is not None  # [1, 1] is now the most recent
    store.insert([3, 3], kv([3, 3]))
    assert store.lookup([2, 2, 0]) is None
    assert store.lookup([1, 1, 0]) is not None
    assert store.statistics().evictions == 1


def test_the_byte_limit_evicts_and_an_oversized_entry_is_refused() -> None:
    size = entry_bytes()
    store = PrefixCache(max_bytes=2 * size)
    for token in range(3):
        assert store.insert([token, token], kv([token, token]))
    stats = store.statistics()
    assert (stats.entries, stats.nbytes, stats.evictions, stats.evicted_bytes) == (
        2,
        2 * size,
        1,
        size,
    )
    assert not store.insert([7, 7], kv([7, 7], layers=5))
    stats = store.statistics()
    assert (stats.entries, stats.refused_inserts, stats.faults) == (2, 1, 0)


def test_evict_to_bytes_and_clear() -> None:
    size = entry_bytes()
    store = PrefixCache()
    for token in range(4):
        store.insert([token, 1], kv([token, 1]))
    evicted = store.evict_to_bytes(2 * size + 1)
    assert (evicted.entries, evicted.nbytes) == (2, 2 * size)
    assert store.lookup([0, 1, 0]) is None  # the oldest went first
    assert store.lookup([3, 1, 0]) is not None
    cleared = store.clear()
    assert (cleared.entries, cleared.nbytes) == (2, 2 * size)
    stats = store.statistics()
    assert (stats.entries, stats.nbytes, stats.evictions) == (0, 0, 2)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("insert"),
            st.lists(st.integers(0, 1), min_size=1, max_size=6),
            st.integers(1, 2),
            st.sampled_from([1, 1, 2, 4]),
        ),
        # A small alphabet, so that prompts often share prefixes with entries.
        st.tuples(st.just("lookup"), st.lists(st.integers(0, 1), min_size=0, max_size=7)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(
    max_entries=st.integers(1, 5),
    max_bytes=st.integers(0, 24).map(lambda units: units * entry_bytes(1, 1, 1)),
    block_tokens=st.sampled_from([1, 2, 3, 64]),
    operations=OPERATIONS,
)
def test_limits_hold_and_hits_are_true_private_prefixes_under_any_workload(
    max_entries: int, max_bytes: int, block_tokens: int, operations: list[tuple[Any, ...]]
) -> None:
    store = PrefixCache(max_entries=max_entries, max_bytes=max_bytes, block_tokens=block_tokens)
    for operation in operations:
        if operation[0] == "insert":
            _, tokens, layers, head_dim = operation
            fits = entry_bytes(len(tokens), layers, head_dim) <= max_bytes
            assert store.insert(tokens, kv(tokens, layers, head_dim)) == fits
        else:
            query = operation[1]
            hit = store.lookup(query)
            if hit is not None:
                assert 1 <= hit.length < len(query)
                check_hit(hit, query, hit.length)
                for layer in hit.cache:  # scribble on the copy; later hits must not see it
                    layer.keys[..., : hit.length, :] = -5.0
        stats = store.statistics()
        assert stats.nbytes <= min(max_bytes, stats.logical_nbytes)
        assert stats.entries <= max_entries
        assert (stats.entries == 0) == (stats.nbytes == 0) == (stats.logical_nbytes == 0)
        assert stats.blocks <= stats.logical_nbytes // entry_bytes(block_tokens, 1, 1)
        assert stats.faults == 0


def test_a_checksum_failure_drops_only_that_entry() -> None:
    store = PrefixCache()
    store.insert([1, 2, 3], kv([1, 2, 3]))
    store.insert([7, 8, 9], kv([7, 8, 9]))
    assert store.corrupt_entry([1, 2, 3])
    assert store.lookup([1, 2, 3, 4]) is None
    stats = store.statistics()
    assert (stats.entries, stats.faults, stats.checksum_failures) == (1, 1, 1)
    check_hit(store.lookup([7, 8, 9, 1]), [7, 8, 9, 1], 3)
    assert store.lookup([1, 2, 3, 4]) is None  # gone, not failing again
    assert store.statistics().faults == 1


def test_corrupting_an_entry_without_offsets_flips_its_stored_checksum() -> None:
    store = PrefixCache()
    state = ArraysCache(1)
    state[0] = mx.zeros((1, 2))
    store.insert([4, 4], [state])
    assert store.corrupt_entry()  # the most recent entry
    assert store.lookup([4, 4, 4]) is None
    assert store.statistics().checksum_failures == 1
    assert not store.corrupt_entry()  # nothing left to corrupt


def test_errors_inside_operations_are_faults_never_exceptions() -> None:
    store = PrefixCache()
    assert not store.insert([1, 2], [object()])  # not a cache layer
    assert not store.insert([1, 2, 3], kv([1, 2]))  # covers another length
    assert not store.insert([1, 2], [])  # no layers
    assert store.lookup([1, 2, 3]) is None
    stats = store.statistics()
    assert (stats.faults, stats.entries, stats.misses) == (3, 0, 1)
    with pytest.raises(ValueError):
        store.inject_faults(-1)  # operator input is checked, not swallowed


def test_injected_faults_open_the_breaker_then_probes_close_it() -> None:
    clock = ManualClock()
    store = PrefixCache(breaker=CircuitBreaker(BreakerConfig(), clock=clock))
    store.insert([1, 2, 3], kv([1, 2, 3]))
    assert store.inject_faults(5) == 5
    for _ in range(5):
        assert store.lookup([1, 2, 3, 4]) is None  # served uncached
    stats = store.statistics()
    assert (stats.faults, stats.pending_faults, stats.breaker.state) == (5, 0, BreakerState.OPEN)
    # Open: requests are served uncached without touching the cache at all.
    assert store.lookup([1, 2, 3, 4]) is None
    assert not store.insert([5, 6], kv([5, 6]))
    stats = store.statistics()
    assert (stats.bypassed, stats.entries, stats.faults) == (2, 1, 5)
    clock.advance(30.0)
    for _ in range(10):  # ten good probes, one at a time
        check_hit(store.lookup([1, 2, 3, 4]), [1, 2, 3, 4], 3)
    stats = store.statistics()
    assert stats.breaker.state is BreakerState.CLOSED
    assert [t.target for t in store.breaker.transitions()] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]
    assert store.insert([5, 6], kv([5, 6]))


def test_concurrent_engines_keep_the_store_consistent() -> None:
    size = entry_bytes(3)
    store = PrefixCache(max_entries=6, max_bytes=4 * size, block_tokens=1)
    threads = 6
    barrier = threading.Barrier(threads)
    problems: list[str] = []

    def engine(worker: int) -> None:
        barrier.wait()
        for step in range(20):
            tokens = [worker % 3, step % 4, step % 2]
            store.insert(tokens, kv(tokens))
            hit = store.lookup([*tokens, 9])
            if hit is not None and covered(hit.cache, hit.length) != tokens[: hit.length]:
                problems.append("a hit covered other tokens")

    workers = [threading.Thread(target=engine, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = store.statistics()
    assert problems == []
    assert stats.nbytes <= 4 * size  # shared blocks let more than four entries fit
    assert stats.entries <= 6
    assert stats.faults == 0
    assert stats.queries == threads * 20


@settings(max_examples=200, deadline=None)
@given(
    shared=st.lists(st.integers(-(2**40), 2**40), max_size=400),
    tail_a=st.lists(st.integers(0, 1), max_size=300),
    tail_b=st.lists(st.integers(2, 3), max_size=300),
)
def test_common_prefix_finds_the_first_difference_at_any_length(
    shared: list[int], tail_a: list[int], tail_b: list[int]
) -> None:
    a, b = token_key(shared + tail_a), token_key(shared + tail_b)
    assert common_prefix(a, b) == len(shared)
    assert common_prefix(b, a) == len(shared)
    assert common_prefix(a, a) == len(shared) + len(tail_a)
