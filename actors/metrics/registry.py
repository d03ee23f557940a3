"""The Prometheus families of mlx-troupe, on a registry of their own.

A private :class:`prometheus_client.CollectorRegistry` (never the global one)
keeps tests and several systems in one process apart. Families driven by
events (requests, latencies, tokens, sheds, restarts) are ordinary
counters and histograms; figures read from elsewhere (the prefix cache, the
engine's load, memory, dropped events, actor states) are yielded by a custom
collector from the values last stored with the ``set_*`` methods, because a
Prometheus counter can only be incremented, never set to another total.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.memory import MemoryFigures
from actors.metrics.protocol import RequestCompleted
from actors.metrics.vllm_compat import EngineFigures, VllmFamilies
from runtime.lifecycle import Crashed, Escalated, Event, Restarted, Started, Stopped

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""Seconds: fine steps for Apple GPUs (milliseconds a token), long tail for CPUs."""

BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}
ACTOR_STATES = ("running", "crashed", "stopped", "escalated")
MAX_LABEL_VALUES = 32
"""Distinct values one free-form label (a reason, an endpoint) may take; more read ``other``."""

_SECRET_WORDS = ("key", "secret")
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class CacheFigures:
    """What the metrics need of ``actors.kvcache.store.CacheStatistics``."""

    queries: int
    hits: int
    hit_tokens: int
    evictions: int
    nbytes: int
    entries: int
    breaker_state: str | None
    """``closed``, ``half_open`` or ``open``."""
    query_tokens: int = 0
    max_bytes: int = 0
    logical_nbytes: int = 0
    """What the entries would hold with nothing shared (``nbytes`` counts shared blocks once)."""
    under_pressure: bool = False
    """Memory reads above the high-water mark (the cache is being shed)."""


@dataclass(frozen=True)
class Load:
    """Requests the generation engine is running and holding back."""

    running: int
    waiting: int


def safe_config(config: Mapping[str, str]) -> dict[str, str]:
    """The configuration as ``troupe_config_info`` labels, secrets left out.

    Callers must pass no secrets; keys naming a key or a secret are dropped
    anyway, and the rest are made valid label names.
    """
    labels: dict[str, str] = {}
    for key, value in config.items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            continue
        name = _LABEL_CHARS.sub("_", key).lstrip("_") or "unnamed"
        if name[0].isdigit():
            name = f"k_{name}"
        labels[name] = str(value)
    return labels


class _Labels:
    """Caps the distinct values of one label, so a misbehaving caller cannot explode it."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class _Figures(Collector):
    """Yields the stored figures each time the registry is collected."""

    def __init__(self) -> None:
        self.dropped = 0
        self.cache: CacheFigures | None = None
        self.load: Load | None = None
        self.memory = MemoryFigures()
        self.engine_memory: MemoryFigures | None = None
        self.states: dict[str, str] = {}
        self.engines: dict[str, EngineFigures] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._cache()
        yield from self._load()
        yield from self._memory()
        dropped = CounterMetricFamily(
            "troupe_metric_events_dropped",
            "Messages to the metrics actor refused at its mailbox (full, or the actor down).",
        )
        dropped.add_metric([], self.dropped)
        yield dropped
        states = GaugeMetricFamily(
            "troupe_actor_state", "1 for each actor's current state.", labels=["actor", "state"]
        )
        for path, current in sorted(self.states.items()):
            for state in ACTOR_STATES:
                states.add_metric([path, state], 1.0 if state == current else 0.0)
        yield states

    def _cache(self) -> Iterator[Metric]:
        cache = self.cache or CacheFigures(0, 0, 0, 0, 0, 0, None)
        for name, doc, value in (
            ("queries", "Prefix-cache lookups.", cache.queries),
            ("hits", "Prefix-cache lookups that found a prefix.", cache.hits),
            ("hit_tokens", "Prompt tokens served from the prefix cache.", cache.hit_tokens),
            ("evictions", "Prefix-cache entries evicted.", cache.evictions),
        ):
            yield CounterMetricFamily(f"troupe_cache_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "troupe_cache_bytes", "Prefix-cache size, each shared block once.", value=cache.nbytes
        )
        yield GaugeMetricFamily(
            "troupe_cache_logical_bytes",
            "What the prefix cache's entries would take with no block shared.",
            value=cache.logical_nbytes,
        )
        yield GaugeMetricFamily("troupe_cache_entries", "Cache entries.", value=cache.entries)
        breaker = GaugeMetricFamily(
            "troupe_cache_breaker_state", "Cache breaker: 0 closed, 1 half_open, 2 open."
        )
        if cache.breaker_state in BREAKER_CODES:
            breaker.add_metric([], BREAKER_CODES[cache.breaker_state])
        yield breaker
        pressure = GaugeMetricFamily(
            "troupe_memory_pressure",
            "1 while memory reads above the high-water mark (the prefix cache is shed "
            "and new requests get 429), else 0.",
        )
        if self.cache is not None:
            pressure.add_metric([], 1.0 if self.cache.under_pressure else 0.0)
        yield pressure

    def _load(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("troupe_requests_running", "Requests being generated.")
        waiting = GaugeMetricFamily("troupe_requests_waiting", "Requests waiting for a slot.")
        if self.load is not None:
            running.add_metric([], self.load.running)
            waiting.add_metric([], self.load.waiting)
        yield running
        yield waiting

    def _memory(self) -> Iterator[Metric]:
        memory, engine = self.memory, self.engine_memory
        mlx = engine or memory  # MLX's arrays live where the engine runs
        for name, doc, value in (
            ("process_resident_memory_bytes", "Resident set size.", memory.rss),
            ("process_resident_memory_peak_bytes", "Peak resident set size.", memory.peak_rss),
            (
                "engine_resident_memory_bytes",
                "Resident set size of the engine process.",
                None if engine is None else engine.rss,
            ),
            (
                "engine_resident_memory_peak_bytes",
                "Peak resident set size of the engine process.",
                None if engine is None else engine.peak_rss,
            ),
            ("mlx_active_memory_bytes", "MLX memory in live arrays.", mlx.mlx_active),
            ("mlx_peak_memory_bytes", "Peak MLX memory.", mlx.mlx_peak),
            ("mlx_cache_memory_bytes", "MLX allocator cache.", mlx.mlx_cache),
        ):
            family = GaugeMetricFamily(f"troupe_{name}", doc)
            if value is not None:
                family.add_metric([], value)
            yield family


class MetricsRegistry:
    """Every ``troupe_`` family, on a private registry."""

    def __init__(self, config: Mapping[str, str] | None = None, *, vllm_names: bool = True) -> None:
        """Create the families.

        Args:
            config: The effective configuration as strings; must hold no secrets.
                Its ``model`` names the single served model in ``vllm:*`` labels.
            vllm_names: Also expose the vLLM-compatible ``vllm:*`` families.
        """
        self.registry = CollectorRegistry()
        registry = self.registry
        self._figures = _Figures()
        registry.register(self._figures)
        self._endpoints = _Labels()
        self._reasons = _Labels()
        self._models = _Labels()
        self.requests = Counter(
            "troupe_requests",
            'Requests answered, by the served model they named ("" before one was known).',
            ["endpoint", "status", "model"],
            registry=registry,
        )
        self.ttft = self._histogram("time_to_first_token_seconds", "Time to the first token.")
        self.inter_token = self._histogram("inter_token_latency_seconds", "Gaps between tokens.")
        self.e2e = self._histogram("request_duration_seconds", "End-to-end request latency.")
        self.queue = self._histogram("queue_time_seconds", "Time from admission to prefill.")
        self.prompt_tokens = Counter("troupe_prompt_tokens", "Prompt tokens.", registry=registry)
        self.generated_tokens = Counter(
            "troupe_generation_tokens", "Generated tokens.", registry=registry
        )
        self.shed = Counter("troupe_requests_shed", "Requests shed.", ["reason"], registry=registry)
        self._tenants = _Labels()
        self.tenant_shed = Counter(
            "troupe_tenant_requests_shed",
            "Requests shed, by tenant (at most 32 tenants named, the rest as other).",
            ["tenant", "reason"],
            registry=registry,
        )
        self.cancelled = Counter(
            "troupe_requests_cancelled", "Requests cancelled.", ["reason"], registry=registry
        )
        self.restarts = Counter(
            "troupe_actor_restarts", "Actor restarts.", ["actor"], registry=registry
        )
        self.config = Info("troupe_config", "The effective configuration.", registry=registry)
        self.show_config(config or {})
        self.default_model = (config or {}).get("model", "")
        self.vllm = VllmFamilies(registry, lambda: self._figures.engines) if vllm_names else None

    def show_config(self, config: Mapping[str, str]) -> None:
        """``troupe_config_info`` from now on: ``config``'s labels (secrets dropped)."""
        self.config.info(safe_config(config))

    def _histogram(self, name: str, doc: str) -> Histogram:
        return Histogram(f"troupe_{name}", doc, buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_completed(self, event: RequestCompleted, inter_token: list[float]) -> None:
        """Count a finished request; observe its latencies if it was admitted."""
        self.requests.labels(
            self._endpoints(event.endpoint), str(event.status), self._models(event.model)
        ).inc()
        self.prompt_tokens.inc(max(0, event.prompt_tokens))
        self.generated_tokens.inc(max(0, event.completion_tokens))
        if self.vllm is not None:
            self.vllm.observe_completed(event, inter_token, event.model or self.default_model)
        if not event.admitted:
            return
        self.e2e.observe(max(0.0, event.duration_s))
        if event.ttft_s is not None:
            self.ttft.observe(max(0.0, event.ttft_s))
        if event.queue_s is not None:
            self.queue.observe(max(0.0, event.queue_s))
        for gap in inter_token:
            self.inter_token.observe(max(0.0, gap))

    def observe_shed(self, reason: str, tenant: str = "") -> str:
        """Count a shed request; return the label used (``other`` past the cap)."""
        label = self._reasons(reason)
        self.shed.labels(label).inc()
        if tenant:
            self.tenant_shed.labels(self._tenants(tenant), label).inc()
        return label

    def observe_cancelled(self, reason: str) -> str:
        """Count a cancelled request; return the label used (``other`` past the cap)."""
        label = self._reasons(reason)
        self.cancelled.labels(label).inc()
        return label

    def observe_lifecycle(self, event: Event) -> None:
        """Follow an actor's state and count its restarts."""
        match event:
            case Started() | Restarted():
                self._figures.states[event.path] = "running"
                if isinstance(event, Restarted):
                    self.restarts.labels(event.path).inc()
            case Crashed():
                self._figures.states[event.path] = "crashed"
            case Stopped():
                self._figures.states[event.path] = "stopped"
            case Escalated():
                self._figures.states[event.path] = "escalated"

    @property
    def actor_states(self) -> dict[str, str]:
        """The last known state of every actor that published an event, by path."""
        return dict(self._figures.states)

    def set_cache(self, cache: CacheFigures | None) -> None:
        """Store the prefix cache's figures (``None``: unknown, all zero)."""
        self._figures.cache = cache

    def set_load(self, load: Load | None) -> None:
        """Store the engine's running and waiting requests (``None``: unknown, not set)."""
        self._figures.load = load

    def set_engines(self, engines: Mapping[str, EngineFigures]) -> None:
        """Store each model's engine figures, by served name ("": the single model)."""
        self._figures.engines = {
            name or self.default_model: figures for name, figures in engines.items()
        }

    def set_memory(self, memory: MemoryFigures, engine: MemoryFigures | None = None) -> None:
        """Store the server's memory, and the engine process's where it has one."""
        self._figures.memory = memory
        self._figures.engine_memory = engine

    def set_dropped(self, dropped: int) -> None:
        """Events refused at the metrics mailbox so far."""
        self._figures.dropped = dropped

    def render(self) -> str:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry).decode("utf-8")
