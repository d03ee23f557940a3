"""The prefix cache's shared blocks: a common prefix is held once, and freed with its last user.

Caches are real mlx-lm layers whose keys hold each position's token id (plus
the layer index), so a hit's contents prove which tokens it covers; memory is
read from MLX itself, not only from the store's own accounting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

from actors.kvcache.persistence import load_cache, save_cache
from actors.kvcache.store import PrefixCache

pytestmark = pytest.mark.timeout(60)

HEADS, DIM, LAYERS = 2, 32, 3
new_layer: Any = KVCache  # mlx-lm leaves its cache classes unannotated
new_rotating: Any = RotatingKVCache


def kv(tokens: Sequence[int]) -> list[Any]:
    """Layers as the engine hands them over: exactly ``len(tokens)`` positions."""
    column = mx.array(list(tokens), dtype=mx.float32).reshape(1, 1, len(tokens), 1)
    block = mx.broadcast_to(column, (1, HEADS, len(tokens), DIM))
    layers = [
        new_layer.from_state((block + layer, block - layer, len(tokens))) for layer in range(LAYERS)
    ]
    mx.eval(*[array for layer in layers for array in (layer.keys, layer.values)])
    return layers


def position_bytes() -> int:
    return LAYERS * 2 * HEADS * DIM * 4


def covered(cache: list[Any], length: int) -> list[list[int]]:
    """Every layer's token ids over the first ``length`` positions (minus the layer index)."""
    return [
        [int(v) - index for v in layer.keys[0, 0, :length, 0].tolist()]
        for index, layer in enumerate(cache)
    ]


SYSTEM = list(range(1000, 1200))  # a 200-token system prompt


def conversation(n: int) -> list[int]:
    return [*SYSTEM, *range(n * 100, n * 100 + 20)]


def test_thirty_two_conversations_hold_their_shared_prompt_once() -> None:
    store = PrefixCache(max_entries=64, max_bytes=1024**3, block_tokens=16)
    # No gc.collect(): the inserted caches go by reference counting, and a
    # collection here could finalize objects other tests left behind.
    before = mx.get_active_memory()
    for n in range(32):
        tokens = conversation(n)
        assert store.insert(tokens, kv(tokens))
    grown = mx.get_active_memory() - before
    stats = store.statistics()
    shared_blocks = len(SYSTEM) // 16  # 12 full blocks; the last 8 system tokens are per entry
    own = 220 - shared_blocks * 16  # 28 positions: one more block and a tail of 12
    assert stats.logical_nbytes == 32 * 220 * position_bytes()
    assert stats.nbytes == (shared_blocks * 16 + 32 * own) * position_bytes()
    assert stats.blocks == shared_blocks + 32
    assert stats.nbytes * 5 < stats.logical_nbytes
    # MLX agrees: the inserted caches' buffers were not kept alive behind the blocks.
    assert grown <= stats.nbytes * 1.1 + 64 * 1024


def test_a_conversation_reuses_another_ones_blocks_with_the_right_contents() -> None:
    store = PrefixCache(block_tokens=16)
    first = conversation(1)
    store.insert(first, kv(first))
    second = conversation(2)
    hit = store.lookup(second)
    assert hit is not None and hit.length == len(SYSTEM)
    assert covered(hit.cache, hit.length) == [SYSTEM] * LAYERS
    assert all(layer.offset == len(SYSTEM) for layer in hit.cache)
    again = store.lookup([*first, 7])
    assert again is not None and again.length == len(first)
    assert covered(again.cache, again.length) == [first] * LAYERS


def test_blocks_are_freed_with_their_last_user() -> None:
    store = PrefixCache(block_tokens=16)
    for n in (1, 2):
        store.insert(conversation(n), kv(conversation(n)))
    both = store.statistics().nbytes
    store.evict_to_bytes(both - 1)  # the older conversation goes, the system prompt stays
    stats = store.statistics()
    assert stats.entries == 1
    assert stats.nbytes == 220 * position_bytes()
    hit = store.lookup(conversation(3))
    assert hit is not None and hit.length == len(SYSTEM)
    store.evict_to_bytes(0)
    stats = store.statistics()
    assert (stats.entries, stats.blocks, stats.nbytes, stats.logical_nbytes) == (0, 0, 0, 0)


def test_namespaces_never_share_blocks() -> None:
    store = PrefixCache(block_tokens=16)
    tokens = conversation(1)
    store.insert(tokens, kv(tokens), "alice")
    alone = store.statistics().nbytes
    store.insert(tokens, kv(tokens), "bob")
    assert store.statistics().nbytes == 2 * alone
    assert store.lookup(tokens, "carol") is None


def test_a_damaged_shared_block_drops_every_entry_that_reads_it() -> None:
    store = PrefixCache(block_tokens=16)
    for n in (1, 2):
        store.insert(conversation(n), kv(conversation(n)))
    other = list(range(5000, 5040))
    store.insert(other, kv(other))
    assert store.corrupt_entry(conversation(1))  # its first block is the system prompt's
    assert store.lookup(conversation(3)) is None
    stats = store.statistics()
    assert (stats.entries, stats.checksum_failures, stats.faults) == (1, 1, 1)
    hit = store.lookup([*other, 1])
    assert hit is not None and covered(hit.cache, hit.length) == [other] * LAYERS


def test_a_damaged_tail_fails_only_its_entry() -> None:
    store = PrefixCache(block_tokens=64)  # shorter than a block: all tail
    store.insert([1, 2, 3], kv([1, 2, 3]))
    store.insert([1, 2, 3, 4], kv([1, 2, 3, 4]))  # supersedes [1, 2, 3]
    store.insert([9, 9], kv([9, 9]))
    assert store.corrupt_entry([1, 2, 3, 4])
    assert store.lookup([1, 2, 3, 4, 5]) is None
    assert store.lookup([9, 9, 9]) is not None
    assert store.statistics().checksum_failures == 1


def test_saved_chains_load_back_shared(tmp_path: Path) -> None:
    store = PrefixCache(block_tokens=16)
    for n in range(4):
        store.insert(conversation(n), kv(conversation(n)))
    held = store.statistics().nbytes
    assert save_cache(store, tmp_path, model="m").written == 4
    restored = PrefixCache(block_tokens=16)
    assert load_cache(restored, tmp_path, model="m").loaded == 4
    assert restored.statistics().nbytes == held
    hit = restored.lookup([*conversation(2), 5])
    assert hit is not None and covered(hit.cache, hit.length) == [conversation(2)] * LAYERS


def test_quantized_layers_are_chained_and_other_caches_kept_whole() -> None:
    store = PrefixCache(block_tokens=16)
    tokens = list(range(48))
    quantized = [layer.to_quantized(group_size=DIM, bits=8) for layer in kv(tokens)]
    assert store.insert(tokens, quantized)
    assert store.statistics().blocks == 3
    hit = store.lookup([*tokens[:40], 1, 2])
    assert hit is not None and hit.length == 40
    assert all(isinstance(layer, QuantizedKVCache) and layer.offset == 40 for layer in hit.cache)
    packed, scales, biases = hit.cache[1].keys
    dequantized = mx.dequantize(packed, scales, biases, group_size=DIM, bits=8)
    column: list[float] = dequantized[0, 0, :, 0].tolist()  # type: ignore[assignment]
    assert [round(v) - 1 for v in column] == tokens[:40]
    window = new_rotating(max_size=64)
    block = mx.zeros((1, HEADS, 20, DIM))
    window.update_and_fetch(block, block)
    assert store.insert(list(range(20)), [window])
    assert store.statistics().blocks == 3  # the rotating window was kept whole


def test_a_padded_cache_counts_only_its_positions() -> None:
    store = PrefixCache(block_tokens=16)
    padded = new_layer()  # update_and_fetch allocates 256 positions at a time
    block = mx.ones((1, HEADS, 40, DIM))
    padded.update_and_fetch(block, block)
    assert padded.keys.shape[2] == 256
    assert store.insert(list(range(40)), [padded])
    assert store.statistics().nbytes == 40 * 2 * HEADS * DIM * 4


def test_a_failed_insert_leaves_no_block_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    store = PrefixCache(block_tokens=16)
    store.insert(conversation(1), kv(conversation(1)))

    def broken(*_: Any) -> Any:
        raise MemoryError("no room for a copy")

    with monkeypatch.context() as patched:
        patched.setattr("actors.kvcache.store.cut", broken)
        assert not store.insert(conversation(2), kv(conversation(2)))  # a fault, not a raise
    assert store.statistics().faults == 1
    store.evict_to_bytes(0)  # the blocks it had pinned (the system prompt's) go too
    stats = store.statistics()
    assert (stats.entries, stats.blocks, stats.nbytes) == (0, 0, 0)
