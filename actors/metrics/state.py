"""What the metrics actor counts, kept outside the actor so that a restart loses nothing.

:class:`MetricsState` holds the registry, the bounded windows behind the
percentiles, the rolling rates and the totals; :class:`MetricsSources` reads
figures owned by others (the prefix cache, the engine's load, memory) when a
snapshot or the Prometheus text is asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from actors.memory import MemoryFigures, read_memory
from actors.metrics.protocol import (
    CATEGORIES,
    ActorsSnapshot,
    CacheSnapshot,
    LatencySnapshot,
    MemorySnapshot,
    MetricsSnapshot,
    Percentiles,
    RequestCancelled,
    RequestCompleted,
    RequestShed,
    RequestsSnapshot,
    ThroughputSnapshot,
    cap_samples,
)
from actors.metrics.registry import CacheFigures, Load, MetricsRegistry
from actors.metrics.vllm_compat import EngineFigures
from actors.metrics.windows import RollingRate, SlidingWindow
from runtime.clock import Clock
from runtime.lifecycle import Event, Restarted

if TYPE_CHECKING:
    from actors.kvcache.store import CacheStatistics

T = TypeVar("T")

MIB = 1024**2

HTTP_ERROR = 400
"""Statuses from here on count as errors (client or server)."""


def cache_figures(stats: CacheStatistics, *, under_pressure: bool = False) -> CacheFigures:
    """What the metrics read of the prefix cache's statistics (and the pressure flag)."""
    return CacheFigures(
        queries=stats.queries,
        hits=stats.hits,
        hit_tokens=stats.hit_tokens,
        evictions=stats.evictions,
        nbytes=stats.nbytes,
        entries=stats.entries,
        breaker_state=str(stats.breaker.state.value),
        query_tokens=stats.query_tokens,
        max_bytes=stats.max_bytes,
        logical_nbytes=stats.logical_nbytes,
        under_pressure=under_pressure,
    )


def engine_figures(load: Load | None, cache: CacheFigures | None) -> EngineFigures:
    """One engine's figures for the ``vllm:*`` families."""
    cache = cache or CacheFigures(0, 0, 0, 0, 0, 0, None)
    return EngineFigures(
        running=None if load is None else load.running,
        waiting=None if load is None else load.waiting,
        cache_query_tokens=cache.query_tokens,
        cache_hit_tokens=cache.hit_tokens,
        cache_bytes=cache.nbytes,
        cache_max_bytes=cache.max_bytes,
    )


@dataclass(frozen=True)
class MetricsSources:
    """Figures read at query time; each must be quick and must not block.

    A source that raises or returns ``None`` leaves its figures unset.
    """

    cache: Callable[[], CacheFigures | None] | None = None
    load: Callable[[], Load | None] | None = None
    memory: Callable[[MemoryFigures | None], MemoryFigures] = read_memory
    engine_memory: Callable[[], MemoryFigures | None] | None = None
    """The engine process's memory, where the engine runs in a process of its own."""
    engines: Callable[[], Mapping[str, EngineFigures]] | None = None
    """Each served model's engine, by name; ``None``: one engine, from ``load`` and ``cache``."""


def _safely(read: Callable[[], T | None] | None) -> T | None:
    if read is None:
        return None
    try:
        return read()
    except Exception:  # a broken source must not take the metrics down
        return None


@dataclass
class _Totals:
    completed: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)


class MetricsState:
    """Counters, windows and the Prometheus registry; outlives every incarnation."""

    def __init__(
        self,
        clock: Clock,
        *,
        config: Mapping[str, str] | None = None,
        window_size: int = 1024,
        window_age: float = 300.0,
        rate_window: float = 300.0,
        vllm_names: bool = True,
    ) -> None:
        """Create empty metrics.

        Args:
            clock: The system's clock (windows and rates read its monotonic time).
            config: The effective configuration for ``troupe_config_info``; no secrets.
            window_size: Observations each latency window keeps at most.
            window_age: Seconds an observation stays in a latency window.
            rate_window: Seconds the rates are averaged over.
            vllm_names: Also expose the vLLM-compatible ``vllm:*`` families.
        """
        self.clock = clock
        self.created = clock.monotonic()
        self.dropped = 0
        """Events refused at the metrics actor's mailbox (the runtime counts them)."""
        self.registry = MetricsRegistry(config, vllm_names=vllm_names)
        now = clock.monotonic

        def window() -> SlidingWindow:
            return SlidingWindow(now, size=window_size, max_age=window_age)

        self.window_size, self.window_age = window_size, window_age
        self.ttft, self.inter_token, self.e2e, self.queue = (window() for _ in range(4))
        self.request_rate = RollingRate(now, window=rate_window)
        self.prompt_rate = RollingRate(now, window=rate_window)
        self.generated_rate = RollingRate(now, window=rate_window)
        self.totals = _Totals()
        self.memory: MemoryFigures | None = None
        self.engine_memory: MemoryFigures | None = None
        self.initial_memory: MemoryFigures | None = None
        """Memory when the first incarnation started: the baseline of ``growth_mb``."""
        self.cache: CacheFigures | None = None
        self.load: Load | None = None

    def observe(self, event: RequestCompleted | RequestShed | RequestCancelled) -> None:
        """Account for one request event."""
        totals = self.totals
        match event:
            case RequestCompleted():
                gaps = cap_samples(event.inter_token_s)
                self.registry.observe_completed(event, gaps)
                totals.completed += 1
                if event.status >= HTTP_ERROR:
                    totals.errors += 1
                totals.prompt_tokens += max(0, event.prompt_tokens)
                totals.generated_tokens += max(0, event.completion_tokens)
                self.request_rate.add()
                self.prompt_rate.add(event.prompt_tokens)
                self.generated_rate.add(event.completion_tokens)
                if event.admitted:
                    self._observe_latency(event, gaps)
            case RequestShed(reason=reason, tenant=tenant):
                totals.shed[self.registry.observe_shed(reason, tenant)] += 1
            case RequestCancelled(reason=reason):
                totals.cancelled[self.registry.observe_cancelled(reason)] += 1

    def _observe_latency(self, event: RequestCompleted, gaps: list[float]) -> None:
        self.e2e.add(event.duration_s)
        if event.ttft_s is not None:
            self.ttft.add(event.ttft_s)
        if event.queue_s is not None:
            self.queue.add(event.queue_s)
        self.inter_token.extend(gaps)

    def observe_lifecycle(self, event: Event) -> None:
        """Follow a lifecycle event of the supervision tree."""
        self.registry.observe_lifecycle(event)
        if isinstance(event, Restarted):
            self.totals.restarts[event.path] += 1

    def refresh(self, sources: MetricsSources, *, dropped: int | None = None) -> None:
        """Read the figures owned by others, now; failures leave them unset.

        ``dropped``: the events refused at the metrics mailbox so far, if known.
        """
        if dropped is not None:
            self.dropped = dropped
            self.registry.set_dropped(dropped)
        previous = self.memory
        self.memory = _safely(lambda: sources.memory(previous)) or MemoryFigures()
        self.engine_memory = _safely(sources.engine_memory)
        self.cache = _safely(sources.cache)
        self.load = _safely(sources.load)
        self.registry.set_memory(self.memory, self.engine_memory)
        self.registry.set_cache(self.cache)
        self.registry.set_load(self.load)
        engines = _safely(sources.engines) if sources.engines is not None else None
        if engines is None:
            engines = {"": engine_figures(self.load, self.cache)}
        self.registry.set_engines(engines)

    def mark_start(self, sources: MetricsSources) -> None:
        """Read memory as the baseline of growth, once (later incarnations keep it)."""
        if self.initial_memory is None:
            self.refresh(sources)
            self.initial_memory = self.memory

    def snapshot(self, categories: Sequence[str]) -> MetricsSnapshot:
        """The asked categories (all when empty); unknown names are listed, not fatal."""
        wanted = set(categories or CATEGORIES)
        return MetricsSnapshot(
            timestamp=self.clock.wall(),
            uptime_seconds=max(0.0, self.clock.monotonic() - self.created),
            latency=self._latency() if "latency" in wanted else None,
            throughput=self._throughput() if "throughput" in wanted else None,
            cache=self._cache() if "cache" in wanted else None,
            memory=self._memory() if "memory" in wanted else None,
            requests=self._requests() if "requests" in wanted else None,
            actors=self._actors() if "actors" in wanted else None,
            unknown_categories=sorted(wanted - set(CATEGORIES)),
        )

    def _latency(self) -> LatencySnapshot:
        def summary(window: SlidingWindow) -> Percentiles:
            p50, p95, p99 = (_ms(p) for p in window.percentiles(50, 95, 99))
            return Percentiles(count=len(window), p50_ms=p50, p95_ms=p95, p99_ms=p99)

        return LatencySnapshot(
            end_to_end=summary(self.e2e),
            time_to_first_token=summary(self.ttft),
            inter_token_latency=summary(self.inter_token),
            queue_time=summary(self.queue),
            window_size=self.window_size,
            window_seconds=self.window_age,
        )

    def _throughput(self) -> ThroughputSnapshot:
        return ThroughputSnapshot(
            window_seconds=self.request_rate.window,
            requests_per_second=self.request_rate.rate(),
            tokens_per_second=self.generated_rate.rate(),
            prompt_tokens_per_second=self.prompt_rate.rate(),
            total_requests=self.totals.completed,
            total_tokens=self.totals.generated_tokens,
        )

    def _cache(self) -> CacheSnapshot:
        cache = self.cache or CacheFigures(0, 0, 0, 0, 0, 0, None)
        return CacheSnapshot(
            queries=cache.queries,
            hits=cache.hits,
            misses=max(0, cache.queries - cache.hits),
            hit_rate=cache.hits / cache.queries if cache.queries else 0.0,
            hit_tokens=cache.hit_tokens,
            evictions=cache.evictions,
            bytes=cache.nbytes,
            logical_bytes=cache.logical_nbytes,
            entries=cache.entries,
            state=cache.breaker_state,
        )

    def _memory(self) -> MemorySnapshot:
        memory = self.memory or MemoryFigures()
        initial = self.initial_memory or MemoryFigures()
        growth = None if memory.rss is None or initial.rss is None else memory.rss - initial.rss
        engine = self.engine_memory
        # MLX's arrays live in the process that runs the engine.
        mlx = engine or memory
        return MemorySnapshot(
            current_mb=_mib(memory.rss),
            peak_mb=_mib(memory.peak_rss),
            initial_mb=_mib(initial.rss),
            growth_mb=_mib(growth),
            mlx_active_mb=_mib(mlx.mlx_active),
            mlx_peak_mb=_mib(mlx.mlx_peak),
            mlx_cache_mb=_mib(mlx.mlx_cache),
            engine_current_mb=None if engine is None else _mib(engine.rss),
            engine_peak_mb=None if engine is None else _mib(engine.peak_rss),
        )

    def _requests(self) -> RequestsSnapshot:
        totals = self.totals
        return RequestsSnapshot(
            completed=totals.completed,
            errors=totals.errors,
            prompt_tokens=totals.prompt_tokens,
            generated_tokens=totals.generated_tokens,
            running=None if self.load is None else self.load.running,
            waiting=None if self.load is None else self.load.waiting,
            shed=dict(totals.shed),
            cancelled=dict(totals.cancelled),
            dropped_events=self.dropped,
        )

    def _actors(self) -> ActorsSnapshot:
        return ActorsSnapshot(
            states=self.registry.actor_states, restarts=dict(self.totals.restarts)
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MIB
