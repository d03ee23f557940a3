"""The metrics actor: request and lifecycle events in, snapshots and Prometheus text out."""

from actors.memory import MemoryFigures, read_memory
from actors.metrics.actor import DEFAULT_MAILBOX, MetricsActor, metrics_child
from actors.metrics.protocol import (
    CATEGORIES,
    MAX_INTER_TOKEN_SAMPLES,
    ActorsSnapshot,
    CacheSnapshot,
    ConfigChanged,
    GetMetricsSnapshot,
    LatencySnapshot,
    MemorySnapshot,
    MetricsSnapshot,
    Percentiles,
    PrometheusText,
    RenderPrometheus,
    RequestCancelled,
    RequestCompleted,
    RequestShed,
    RequestsSnapshot,
    ThroughputSnapshot,
    cap_samples,
    record,
)
from actors.metrics.registry import CacheFigures, Load, MetricsRegistry
from actors.metrics.state import MetricsSources, MetricsState, cache_figures
from actors.metrics.windows import RollingRate, SlidingWindow, percentile

__all__ = [
    "CATEGORIES",
    "DEFAULT_MAILBOX",
    "MAX_INTER_TOKEN_SAMPLES",
    "ActorsSnapshot",
    "CacheFigures",
    "CacheSnapshot",
    "ConfigChanged",
    "GetMetricsSnapshot",
    "LatencySnapshot",
    "Load",
    "MemoryFigures",
    "MemorySnapshot",
    "MetricsActor",
    "MetricsRegistry",
    "MetricsSnapshot",
    "MetricsSources",
    "MetricsState",
    "Percentiles",
    "PrometheusText",
    "RenderPrometheus",
    "RequestCancelled",
    "RequestCompleted",
    "RequestShed",
    "RequestsSnapshot",
    "RollingRate",
    "SlidingWindow",
    "ThroughputSnapshot",
    "cache_figures",
    "cap_samples",
    "metrics_child",
    "percentile",
    "read_memory",
    "record",
]
