"""The ``vllm:*`` families that existing Grafana dashboards and autoscalers read.

vLLM's dashboards, KEDA and HPA rules and the Gateway API inference extension
scrape names such as ``vllm:num_requests_waiting`` and
``vllm:time_to_first_token_seconds_bucket``. Exposing the same names, labels
(``model_name``, ``engine``) and histogram buckets lets them point at
mlx-troupe unchanged. The names and buckets follow vLLM v1's
``vllm/v1/metrics/loggers.py``; only families whose meaning we can honour
are exposed (no preemptions, no speculative decoding, no LoRA).

Two meanings differ from vLLM's and are documented in ``docs/operations.md``:
``vllm:kv_cache_usage_perc`` is the prefix cache's share of its byte budget
(mlx-troupe has no paged KV pool), and the latencies are measured at the HTTP
edge, so they include tokenization and detokenization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.metrics.protocol import RequestCompleted

LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"
"""vLLM numbers its engine cores; each mlx-troupe model has one engine."""

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_GAP_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TOKEN_COUNT_BUCKETS = tuple(
    float(mantissa * 10**exponent) for exponent in range(6) for mantissa in (1, 2, 5)
)
"""vLLM's 1-2-5 series (1, 2, 5, 10, ... 500,000 tokens)."""

HTTP_ERROR = 400
LENGTH_REASONS = frozenset({"length", "max_tokens", "max_output_tokens"})
MAX_MODELS = 64
"""Distinct ``model_name`` values at most; more read ``other``."""


@dataclass(frozen=True)
class EngineFigures:
    """One model's engine as last seen: its load and its prefix cache."""

    running: int | None = None
    waiting: int | None = None
    cache_query_tokens: int = 0
    cache_hit_tokens: int = 0
    cache_bytes: int = 0
    cache_max_bytes: int = 0


def finished_reason(event: RequestCompleted) -> str:
    """The ``finished_reason`` label vLLM uses: ``stop``, ``length`` or ``abort``."""
    if event.status >= HTTP_ERROR:
        return "abort"
    return "length" if event.finish_reason in LENGTH_REASONS else "stop"


class _Engines(Collector):
    """Yields the per-model gauges and cache counters from figures read at scrape time."""

    def __init__(self, read: Callable[[], Mapping[str, EngineFigures]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels=LABELS,
        )
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc",
            "Prefix-cache bytes over its byte budget. 1 means 100 percent usage.",
            labels=LABELS,
        )
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels=LABELS,
        )
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels=LABELS,
        )
        for name, figures in sorted(self._read().items()):
            labels = [name, ENGINE_INDEX]
            if figures.running is not None:
                running.add_metric(labels, figures.running)
            if figures.waiting is not None:
                waiting.add_metric(labels, figures.waiting)
            if figures.cache_max_bytes > 0:
                usage.add_metric(labels, min(1.0, figures.cache_bytes / figures.cache_max_bytes))
            queries.add_metric(labels, figures.cache_query_tokens)
            hits.add_metric(labels, figures.cache_hit_tokens)
        yield from (running, waiting, usage, queries, hits)


class VllmFamilies:
    """The ``vllm:*`` families on the metrics' registry, observed beside ``troupe_*``."""

    def __init__(
        self, registry: CollectorRegistry, engines: Callable[[], Mapping[str, EngineFigures]]
    ) -> None:
        """Register the families.

        Args:
            registry: The metrics' private registry.
            engines: Each served model's engine figures, by served name.
        """
        registry.register(_Engines(engines))
        self._models: set[str] = set()

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=registry)

        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            LABELS,
            registry=registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*LABELS, "finished_reason"],
            registry=registry,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.inter_token = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TOKEN_GAP_BUCKETS,
        )
        # The name vLLM used before inter_token_latency; older dashboards still read it.
        self.per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TOKEN_GAP_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_BUCKETS,
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_BUCKETS,
        )
        self.prompt_lengths = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_COUNT_BUCKETS
        )
        self.generation_lengths = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            TOKEN_COUNT_BUCKETS,
        )

    def _model(self, name: str) -> str:
        if name in self._models:
            return name
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(name)
        return name

    def observe_completed(self, event: RequestCompleted, gaps: list[float], model: str) -> None:
        """Count an admitted request as vLLM's engine would; refused ones never reached it."""
        if not event.admitted:
            return
        labels = (self._model(model), ENGINE_INDEX)
        prompt, generated = max(0, event.prompt_tokens), max(0, event.completion_tokens)
        self.prompt_tokens.labels(*labels).inc(prompt)
        self.generation_tokens.labels(*labels).inc(generated)
        self.success.labels(*labels, finished_reason(event)).inc()
        self.prompt_lengths.labels(*labels).observe(prompt)
        self.generation_lengths.labels(*labels).observe(generated)
        self.e2e.labels(*labels).observe(max(0.0, event.duration_s))
        if event.ttft_s is not None:
            self.ttft.labels(*labels).observe(max(0.0, event.ttft_s))
        if event.queue_s is not None:
            self.queue.labels(*labels).observe(max(0.0, event.queue_s))
        inter_token = self.inter_token.labels(*labels)
        per_output = self.per_output_token.labels(*labels)
        for gap in gaps:
            inter_token.observe(max(0.0, gap))
            per_output.observe(max(0.0, gap))
