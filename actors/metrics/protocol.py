"""Messages of the metrics actor, and the never-blocking way to send its events.

Other actors and the HTTP layer report what happened with :func:`record`,
which uses ``tell_nowait``: reporting a metric must never slow down or fail a
request. When the metrics mailbox is full (or the actor is down) the event is
dropped; the runtime counts it as a dead letter of the metrics actor, which
exports that count as ``troupe_metric_events_dropped_total``.

=======================  ==================  =========
message                  answer              send with
=======================  ==================  =========
``RequestCompleted``     none                record
``RequestShed``          none                record
``RequestCancelled``     none                record
``GetMetricsSnapshot``   ``MetricsSnapshot``  ask
``RenderPrometheus``     ``PrometheusText``  ask
=======================  ==================  =========

Snapshot categories: ``latency``, ``throughput``, ``cache``, ``memory``,
``requests`` and ``actors``; an empty list asks for all of them. With no
traffic yet, rates and ``hit_rate`` are ``0.0`` and percentiles are ``None``
(not ``0.0``, which would read as an impossibly fast request). Latencies are in
milliseconds and memory in MiB, as ``GET /v1/metrics`` shows them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from actors.memory import MemoryFigures
from runtime.actor import ActorRef
from runtime.errors import ActorStopped, MailboxFull
from runtime.messages import Message

MAX_INTER_TOKEN_SAMPLES = 64
"""Inter-token gaps one request may carry, so one long answer cannot flood the windows."""

CATEGORIES = ("latency", "throughput", "cache", "memory", "requests", "actors")
"""Every snapshot category, in the order a snapshot lists them."""

InterTokenSamples = Annotated[list[float], msgspec.Meta(max_length=MAX_INTER_TOKEN_SAMPLES)]


def cap_samples(samples: list[float], limit: int = MAX_INTER_TOKEN_SAMPLES) -> list[float]:
    """Keep at most ``limit`` samples, evenly spread over the whole request.

    Evenly spaced rather than the first ``limit``, so that a slowdown late in
    a long generation still shows in the percentiles.

    Args:
        samples: Inter-token gaps in seconds, in generation order.
        limit: The most samples to keep (at least 1).

    Returns:
        ``samples`` itself when short enough, otherwise a spread-out subset.
    """
    if len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


class RequestCompleted(Message, frozen=True, kw_only=True):
    """A request ended with an HTTP answer (any status)."""

    endpoint: str
    """The route, e.g. ``chat`` or ``completions``: a bounded label, never a raw path."""
    status: int
    model: str
    duration_s: float
    """End to end, from arrival to the last byte."""
    ttft_s: float | None = None
    inter_token_s: InterTokenSamples = msgspec.field(default_factory=list)
    """Gaps between streamed tokens; build it with :func:`cap_samples`."""
    queue_s: float | None = None
    """Time between admission and the start of prefill."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    admitted: bool = True
    """``False``: refused before generation (bad input, shed); such a request is
    counted by status but kept out of the latency figures, where its instant
    answer would read as a fast completion."""


class RequestShed(Message, frozen=True, kw_only=True):
    """A request was turned away before generation (``reason``: a ``ShedReason`` value)."""

    reason: str
    tenant: str = ""
    """Whose request it was ("" on a server without keys)."""


class RequestCancelled(Message, frozen=True, kw_only=True):
    """An admitted request was cancelled (``disconnect``, ``deadline`` ...)."""

    reason: str


class EngineReport(Message, frozen=True, kw_only=True):
    """The engine's load and prefix-cache counters, pushed by whoever sees them.

    When the engine runs in its own process the metrics cannot read them at
    query time; the generation actor tells them on every heartbeat, and before
    it delivers the end of any request, so that a client that has its answer
    finds it counted.
    """

    running: int
    waiting: int
    cache_queries: int
    cache_hits: int
    cache_hit_tokens: int
    cache_evictions: int
    cache_nbytes: int
    cache_entries: int
    cache_breaker: str
    cache_query_tokens: int = 0
    cache_max_bytes: int = 0
    under_pressure: bool = False
    """Memory reads above the high-water mark, as the engine's cache last checked."""
    engine_memory: MemoryFigures | None = None
    """The engine process's memory, as of its last heartbeat."""
    model: str = ""
    """Which served model's engine ("" with a single model)."""


class ConfigChanged(Message, frozen=True, kw_only=True):
    """The effective configuration changed at run time (an operator's edit).

    ``troupe_config_info`` shows it from then on; like the start-up
    configuration, it holds no secrets and no file paths.
    """

    config: dict[str, str]


class GetMetricsSnapshot(Message, frozen=True, kw_only=True):
    """Ask for a JSON-friendly snapshot; an empty ``categories`` means all of them."""

    categories: list[str] = msgspec.field(default_factory=list)


class RenderPrometheus(Message, frozen=True, kw_only=True):
    """Ask for the Prometheus text exposition of every family."""


class PrometheusText(Message, frozen=True, kw_only=True):
    """The answer to :class:`RenderPrometheus` (content type ``text/plain; version=0.0.4``)."""

    text: str


class Percentiles(msgspec.Struct, frozen=True, kw_only=True):
    """Nearest-rank percentiles of one sliding window, in milliseconds; ``None`` while empty."""

    count: int
    """Observations in the window now."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class LatencySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Recent latencies, from windows bounded by size and by age."""

    end_to_end: Percentiles
    time_to_first_token: Percentiles
    inter_token_latency: Percentiles
    queue_time: Percentiles
    """From admission to the start of prefill."""
    window_size: int
    """Observations each window keeps at most."""
    window_seconds: float
    """Seconds an observation stays in a window."""


class ThroughputSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Rates over the rolling window (five minutes by default), and lifetime totals."""

    window_seconds: float
    requests_per_second: float
    tokens_per_second: float
    """Generated tokens per second."""
    prompt_tokens_per_second: float
    total_requests: int
    """Requests answered since the server started, any status."""
    total_tokens: int
    """Tokens generated since the server started."""


class CacheSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The prefix cache as last read; all zero when no cache is wired."""

    queries: int
    hits: int
    misses: int
    hit_rate: float
    """``hits / queries``, ``0.0`` before the first query."""
    hit_tokens: int
    evictions: int
    bytes: int
    logical_bytes: int = 0
    """What the entries would take with no block shared (``bytes`` counts shared blocks once)."""
    entries: int
    state: str | None
    """The cache's circuit breaker: ``closed``, ``half_open``, ``open``, or ``None`` if unknown."""


class MemorySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Memory in MiB, read at query time; ``None`` where it could not be read."""

    current_mb: float | None
    """Resident set size now."""
    peak_mb: float | None
    """The largest resident set size so far."""
    initial_mb: float | None
    """Resident set size when the server started (the metrics actor, first of the tree)."""
    growth_mb: float | None
    """``current_mb - initial_mb``: growth while serving."""
    mlx_active_mb: float | None
    """MLX's memory in live arrays, in the process that runs the engine (as every mlx_ figure)."""
    mlx_peak_mb: float | None
    mlx_cache_mb: float | None
    engine_current_mb: float | None = None
    """The engine process's resident set size (``None`` when the engine runs in the server)."""
    engine_peak_mb: float | None = None
    """The engine process's largest resident set size so far."""


class RequestsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Request totals since the state was created (across restarts)."""

    completed: int
    errors: int
    """Completed with a status of 400 or more."""
    prompt_tokens: int
    generated_tokens: int
    running: int | None
    waiting: int | None
    shed: dict[str, int]
    cancelled: dict[str, int]
    dropped_events: int


class ActorsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Per-actor state and restart counts, keyed by path, from lifecycle events."""

    states: dict[str, str]
    restarts: dict[str, int]


class MetricsSnapshot(Message, frozen=True, kw_only=True):
    """The answer to :class:`GetMetricsSnapshot`; categories not asked for are ``None``.

    Its fields are the JSON of ``GET /v1/metrics`` (less the ``None`` categories).
    """

    timestamp: float
    """Wall-clock time of the snapshot, seconds since the epoch."""
    uptime_seconds: float
    """Seconds since the metrics state was created (server start)."""
    latency: LatencySnapshot | None = None
    throughput: ThroughputSnapshot | None = None
    cache: CacheSnapshot | None = None
    memory: MemorySnapshot | None = None
    requests: RequestsSnapshot | None = None
    actors: ActorsSnapshot | None = None
    unknown_categories: list[str] = msgspec.field(default_factory=list)


def record(ref: ActorRef, event: Message) -> bool:
    """Send ``event`` to the metrics actor without ever waiting.

    Args:
        ref: The metrics actor.
        event: A ``RequestCompleted``, ``RequestShed`` or ``RequestCancelled``.

    Returns:
        Whether the event was enqueued. The runtime counts one that was not
        as a dead letter of the metrics actor, which exports that count.
    """
    try:
        ref.tell_nowait(event)
    except (MailboxFull, ActorStopped):
        # Metrics are best effort: a lost sample must never fail the request.
        return False
    return True
