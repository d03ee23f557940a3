"""Persistence, memory pressure, and the kv-cache actor answering through an ActorSystem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from actors.kvcache.actor import KVCacheActor, kvcache_child
from actors.kvcache.control import KVCacheSettings
from actors.kvcache.persistence import load_cache, save_cache
from actors.kvcache.pressure import MemoryMonitor, PressureConfig
from actors.kvcache.protocol import (
    CacheCleared,
    CacheLoaded,
    CacheSaved,
    CacheStats,
    CheckPressure,
    ClearCache,
    FaultsInjected,
    GetCacheStats,
    InjectCacheFaults,
    LoadCache,
    PressureReport,
    SaveCache,
)
from actors.kvcache.store import PrefixCache
from actors.memory import MemoryFigures, read_memory
from runtime import (
    NO_BACKOFF,
    ActorDied,
    ActorSystem,
    ChildSpec,
    ManualClock,
    Message,
    SupervisorSpec,
)
from runtime.breaker import BreakerState
from tests.support import SECRET, Crash, worker

pytestmark = pytest.mark.timeout(60)

new_layer: Any = KVCache  # mlx-lm leaves KVCache unannotated


def kv(tokens: Sequence[int], layers: int = 2) -> list[Any]:
    """Per-layer caches whose keys hold each position's token id, sized as the engine's are."""
    column = mx.array(list(tokens), dtype=mx.float32).reshape(1, 1, len(tokens), 1)
    block = mx.broadcast_to(column, (1, 2, len(tokens), 4))
    return [new_layer.from_state((block, block, len(tokens))) for _ in range(layers)]


def hit_tokens(store: PrefixCache, query: Sequence[int]) -> list[int] | None:
    hit = store.lookup(query)
    if hit is None:
        return None
    return [int(v) for v in hit.cache[0].keys[0, 0, : hit.length, 0].tolist()]


POSITION = sum(c.nbytes for c in kv([1]))
"""Bytes one cached position takes (the store counts positions, not buffer slack)."""
PAIR = 2 * POSITION
"""Bytes of a two-token entry."""
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
FILLED = 9 * POSITION
"""Bytes of the PROMPTS' entries."""


def filled(prompts: list[list[int]] = PROMPTS, max_entries: int = 32) -> PrefixCache:
    store = PrefixCache(max_entries=max_entries)
    for tokens in prompts:
        assert store.insert(tokens, kv(tokens))
    return store


# -- persistence ------------------------------------------------------------------


def test_a_saved_cache_loads_back_with_its_recency(tmp_path: Path) -> None:
    result = save_cache(filled(), tmp_path, model="m")
    assert (result.written, result.failed, result.removed) == (3, 0, 0)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".safetensors"] * 3
    restored = PrefixCache(max_entries=2)  # room for the two most recent only
    loaded = load_cache(restored, tmp_path, model="m")
    assert (loaded.loaded, loaded.dropped, loaded.skipped) == (3, 0, 0)
    assert hit_tokens(restored, [1, 2, 3, 0]) is None  # the oldest made way
    assert hit_tokens(restored, [4, 5, 0]) == [4, 5]
    assert hit_tokens(restored, [6, 7, 8, 9]) == [6, 7, 8]
    assert all(str(t) not in p.name for p in tmp_path.iterdir() for t in (123, 6789))


def test_persisted_entries_keep_their_namespace(tmp_path: Path) -> None:
    store = PrefixCache()
    for namespace in ("", "alice", "bob"):
        assert store.insert([1, 2, 3], kv([1, 2, 3]), namespace)
    assert save_cache(store, tmp_path, model="m").written == 3
    assert len(list(tmp_path.iterdir())) == 3  # one tokens, three files
    restored = PrefixCache()
    assert load_cache(restored, tmp_path, model="m").loaded == 3
    assert {entry.namespace for entry in restored.snapshot()} == {"", "alice", "bob"}
    assert restored.lookup([1, 2, 3, 4], "carol") is None
    hit = restored.lookup([1, 2, 3, 4], "alice")
    assert hit is not None and hit.length == 3


def test_saving_mirrors_the_cache_and_skips_a_corrupted_entry(tmp_path: Path) -> None:
    store = filled()
    save_cache(store, tmp_path)
    store.evict_to_bytes(6 * POSITION)  # [4, 5] and [6, 7, 8, 9] stay
    assert store.corrupt_entry([6, 7, 8, 9])
    result = save_cache(store, tmp_path)
    assert (result.written, result.failed, result.removed) == (1, 1, 2)
    assert len(list(tmp_path.iterdir())) == 1


def test_bad_files_are_dropped_while_the_good_ones_load(tmp_path: Path) -> None:
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3, 3, 3]]
    save_cache(filled(prompts), tmp_path)
    files = {p.name: p for p in tmp_path.iterdir()}
    truncated, checksum, content, good = (
        files[name] for name in sorted(files, key=lambda n: _tokens_of(files[n]))
    )
    truncated.write_bytes(truncated.read_bytes()[:-100])
    arrays, metadata = load_raw(checksum)
    metadata["0.checksum"] = "0" * 32
    mx.save_safetensors(str(checksum), arrays, metadata)
    data = bytearray(content.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the arrays, metadata intact
    content.write_bytes(bytes(data))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a cache at all")
    (tmp_path / ".partial-leftover.safetensors").write_bytes(b"interrupted")
    restored = PrefixCache()
    loaded = load_cache(restored, tmp_path)
    assert (loaded.loaded, loaded.dropped, loaded.skipped) == (1, 4, 0)
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # bad files deleted
    assert restored.statistics().entries == 1
    assert restored.statistics().faults == 0


def load_raw(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    loaded: Any = mx.load(str(path), return_metadata=True)
    arrays, metadata = loaded
    return arrays, metadata


def _tokens_of(path: Path) -> str:
    return load_raw(path)[1]["0.tokens"]


def test_another_models_files_and_a_missing_directory_load_nothing(tmp_path: Path) -> None:
    save_cache(filled(), tmp_path, model="model-a")
    loaded = load_cache(PrefixCache(), tmp_path, model="model-b")
    assert (loaded.loaded, loaded.dropped) == (0, 3)
    missing = load_cache(PrefixCache(), tmp_path / "nowhere")
    assert (missing.loaded, missing.dropped, missing.skipped) == (0, 0, 0)


# -- memory pressure ----------------------------------------------------------------


class FakeMemory:
    """Process memory as a fixed base plus what the cache holds."""

    def __init__(self, store: PrefixCache, base: int) -> None:
        self.store = store
        self.base = base

    def __call__(self) -> MemoryFigures:
        return MemoryFigures(rss=self.base + self.store.nbytes, mlx_active=None, mlx_cache=None)


def test_pressure_evicts_to_the_low_mark_clears_mlx_and_raises_the_flag() -> None:
    store = filled([[n, n] for n in range(8)])
    base = 1_000_000
    monitor = MemoryMonitor(
        store,
        PressureConfig(high_water=base + 6 * PAIR, low_water=base + 2 * PAIR),
        read=FakeMemory(store, base),
    )
    scratch = mx.zeros((256, 1024))
    mx.eval(scratch)
    del scratch
    assert mx.get_cache_memory() > 0
    outcome = monitor.check()
    assert outcome.relieved
    assert outcome.under_pressure
    assert (outcome.evicted_entries, outcome.evicted_bytes) == (6, 6 * PAIR)
    assert outcome.after is not None
    assert outcome.after.usage == base + 2 * PAIR
    assert mx.get_cache_memory() == 0  # MLX's freed buffers went back to the system
    assert hit_tokens(store, [7, 7, 0]) == [7, 7]  # the most recent survive
    assert hit_tokens(store, [0, 0, 0]) is None
    assert monitor.check().under_pressure  # at the low mark, not below: still up
    store.evict_to_bytes(PAIR)
    assert not monitor.check().under_pressure  # below the low mark: down
    stats = monitor.statistics()
    assert (stats.checks, stats.reliefs, stats.last_usage) == (3, 1, base + PAIR)


def test_pressure_beyond_the_cache_empties_it_and_the_flag_stays_up() -> None:
    store = filled()
    reading = MemoryFigures(rss=None, mlx_active=10 * PAIR, mlx_cache=2 * PAIR)
    monitor = MemoryMonitor(
        store,
        PressureConfig(high_water=5 * PAIR, low_water=PAIR),
        read=lambda: reading,
        clear_mlx_cache=lambda: None,
    )
    assert monitor.check().evicted_entries == 3
    assert store.statistics().entries == 0
    reading = MemoryFigures(rss=3 * PAIR, mlx_active=None, mlx_cache=None)
    assert monitor.under_pressure  # between the marks: stays up
    assert not monitor.check().relieved
    assert monitor.under_pressure
    reading = MemoryFigures(rss=None, mlx_active=None, mlx_cache=None)
    outcome = monitor.check()  # nothing readable: nothing changes
    assert (outcome.under_pressure, outcome.relieved) == (True, False)


def test_real_readings_and_configs() -> None:
    reading = read_memory()
    assert reading.rss is not None and reading.rss > 0
    assert reading.usage is not None and reading.usage >= reading.rss
    machine = PressureConfig.for_machine()
    assert 0 < machine.low_water < machine.high_water
    with pytest.raises(ValueError):
        PressureConfig(high_water=10, low_water=10)


# -- the actor ------------------------------------------------------------------------


def tree(child: ChildSpec) -> SupervisorSpec:
    return SupervisorSpec("root", [child], backoff=NO_BACKOFF)


async def stats(system: ActorSystem) -> CacheStats:
    return await system.ref("kvcache").ask(GetCacheStats(), timeout=10, expect=CacheStats)


async def test_the_actor_answers_its_protocol(tmp_path: Path) -> None:
    store = filled()
    settings = KVCacheSettings(directory=str(tmp_path), check_interval=None)
    async with ActorSystem(tree(kvcache_child(store, settings=settings))) as system:
        ref = system.ref("kvcache")
        assert hit_tokens(store, [1, 2, 3, 4]) == [1, 2, 3]  # the engine uses it directly
        first = await stats(system)
        assert (first.entries, first.hits, first.queries, first.nbytes) == (3, 1, 1, FILLED)
        assert first.breaker.state is BreakerState.CLOSED
        saved = await ref.ask(SaveCache(), timeout=10, expect=CacheSaved)
        assert (saved.enabled, saved.written) == (True, 3)
        report = await ref.ask(CheckPressure(), timeout=10, expect=PressureReport)
        assert not report.enabled  # no monitor configured
        injected = await ref.ask(InjectCacheFaults(count=5), timeout=10, expect=FaultsInjected)
        assert injected.pending == 5
        for _ in range(6):
            assert store.lookup([1, 2, 3, 4]) is None  # served uncached
        degraded = await stats(system)
        assert (degraded.faults, degraded.bypassed) == (5, 1)
        assert degraded.breaker.state is BreakerState.OPEN
        assert [t.target for t in degraded.recent_transitions] == [BreakerState.OPEN]
        cleared = await ref.ask(ClearCache(), timeout=10, expect=CacheCleared)
        assert (cleared.entries, cleared.nbytes) == (3, FILLED)
        store.breaker.reset()
        loaded = await ref.ask(LoadCache(), timeout=10, expect=CacheLoaded)
        assert (loaded.enabled, loaded.loaded, loaded.dropped) == (True, 3, 0)
        assert hit_tokens(store, [4, 5, 6]) == [4, 5]


async def test_a_fresh_actor_restores_the_cache_from_its_directory(tmp_path: Path) -> None:
    save_cache(filled(), tmp_path)
    store = PrefixCache()
    settings = KVCacheSettings(directory=str(tmp_path), check_interval=None)
    async with ActorSystem(tree(kvcache_child(store, settings=settings))) as system:
        assert (await stats(system)).entries == 3
        assert hit_tokens(store, [6, 7, 8, 9, 1]) == [6, 7, 8, 9]


async def test_periodic_pressure_checks_run_on_the_system_clock() -> None:
    clock = ManualClock()
    store = filled([[n, n] for n in range(4)])
    memory = FakeMemory(store, base=10 * PAIR)
    config = PressureConfig(high_water=12 * PAIR, low_water=11 * PAIR)
    monitor = MemoryMonitor(store, config, read=memory)
    child = kvcache_child(store, monitor=monitor, settings=KVCacheSettings(check_interval=5.0))
    async with ActorSystem(tree(child), clock=clock) as system:
        await anyio.wait_all_tasks_blocked()  # the timer waits for its first deadline
        assert (await stats(system)).pressure_checks == 0
        clock.advance(4.999)
        await anyio.wait_all_tasks_blocked()
        assert (await stats(system)).pressure_checks == 0
        clock.advance(0.001)
        await anyio.wait_all_tasks_blocked()  # the timer queued a check before this ask
        first = await stats(system)
        assert (first.pressure_checks, first.under_pressure, first.entries) == (1, True, 1)
        assert first.memory_usage == 11 * PAIR
        memory.base = 9 * PAIR
        clock.advance(5.0)
        await anyio.wait_all_tasks_blocked()
        second = await stats(system)
        assert (second.pressure_checks, second.under_pressure) == (2, False)


class CrashableKVCache(KVCacheActor):
    """The real actor, plus a way to crash it from a test."""

    async def handle(self, message: Message) -> Message | None:
        match message:
            case Crash():
                raise RuntimeError(SECRET)
        return await super().handle(message)


async def test_the_cache_survives_a_crash_and_restart_of_its_actor() -> None:
    clock = ManualClock()
    store = filled()
    monitor = MemoryMonitor(
        store, PressureConfig(high_water=2**62, low_water=2**61), read=FakeMemory(store, 0)
    )
    settings = KVCacheSettings(check_interval=5.0)
    child = ChildSpec(
        "kvcache", lambda: CrashableKVCache(store, monitor=monitor, settings=settings)
    )
    async with ActorSystem(tree(child), clock=clock) as system:
        assert hit_tokens(store, [1, 2, 3, 0]) == [1, 2, 3]
        with pytest.raises(ActorDied):
            await system.ref("kvcache").ask(Crash(), timeout=10)
        await system.wait_idle()
        assert worker(system, "kvcache").restarts_total == 1
        after = await stats(system)
        assert (after.entries, after.hits, after.queries) == (3, 1, 1)
        assert hit_tokens(store, [6, 7, 8, 9, 0]) == [6, 7, 8, 9]
        await anyio.wait_all_tasks_blocked()
        clock.advance(5.0)  # the new incarnation runs its own pressure timer
        await anyio.wait_all_tasks_blocked()
        assert (await stats(system)).pressure_checks == 1
