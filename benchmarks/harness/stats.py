"""Figures from outcomes: latency percentiles, throughput, errors by kind.

Definitions (the report repeats them):

* **time to first token (TTFT)**: from sending the request to the first event
  carrying generated text.
* **inter-token latency (ITL)**: per request, (last token - first token) /
  (tokens - 1), so a server that sends several tokens per event is not
  flattered; percentiles are over requests.
* **end-to-end latency**: from sending the request to the end of its stream.
* **server CPU**: CPU seconds of the server's process per wall second, and
  per output token (only for servers the harness started).
* **output tokens/s**: tokens of successful requests (the usage each server
  reported) / the scenario's wall time; **requests/s**: successful requests /
  wall time.

Latency percentiles cover successful requests; every failed request is
counted in ``errors`` under its kind and in ``failed``, never left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgspec

from benchmarks.harness.loadgen import Load, Outcome


class Distribution(msgspec.Struct, frozen=True):
    """Percentiles of one latency, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float


class ScenarioStats(msgspec.Struct, frozen=True, kw_only=True):
    """Every figure of one scenario against one server."""

    requests: int
    succeeded: int
    failed: int
    errors: dict[str, int]
    wall_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    mean_completion_tokens: float
    mean_prompt_tokens: float | None
    ttft_ms: Distribution | None
    itl_ms: Distribution | None
    e2e_ms: Distribution | None
    client_cpu_fraction: float
    """CPU seconds the load generator used per wall second (1.0 = one core)."""
    server_cpu_fraction: float | None = None
    """CPU seconds the server's process used per wall second (2.0 = two cores)."""
    server_cpu_ms_per_token: float | None = None
    """Server CPU milliseconds per output token of successful requests."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(seconds: Sequence[float]) -> Distribution | None:
    """Percentiles of ``seconds``, in milliseconds; ``None`` when there are none."""
    if not seconds:
        return None
    ms = [value * 1e3 for value in seconds]
    return Distribution(
        count=len(ms),
        mean=sum(ms) / len(ms),
        p50=percentile(ms, 50),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        max=max(ms),
    )


def inter_token(outcome: Outcome) -> float | None:
    """Mean seconds between tokens of one request (``None`` below two tokens)."""
    first, last = outcome.first_token, outcome.last_token
    if first is None or last is None or outcome.tokens < 2:
        return None
    return (last - first) / (outcome.tokens - 1)


def summarize(load: Load) -> ScenarioStats:
    """The figures of one load."""
    good = [outcome for outcome in load.outcomes if outcome.ok]
    errors = Counter(outcome.error for outcome in load.outcomes if outcome.error is not None)
    tokens = sum(outcome.tokens for outcome in good)
    prompts = [o.prompt_tokens for o in good if o.prompt_tokens is not None]
    ttft = [o.first_token - o.start for o in good if o.first_token is not None]
    itl = [gap for gap in map(inter_token, good) if gap is not None]
    server_cpu = load.server_cpu_seconds
    return ScenarioStats(
        requests=len(load.outcomes),
        succeeded=len(good),
        failed=len(load.outcomes) - len(good),
        errors=dict(sorted(errors.items())),
        wall_s=load.wall,
        output_tokens=tokens,
        output_tokens_per_s=tokens / load.wall,
        requests_per_s=len(good) / load.wall,
        mean_completion_tokens=tokens / len(good) if good else 0.0,
        mean_prompt_tokens=sum(prompts) / len(prompts) if prompts else None,
        ttft_ms=distribution(ttft),
        itl_ms=distribution(itl),
        e2e_ms=distribution([o.end - o.start for o in good]),
        client_cpu_fraction=load.cpu_seconds / load.wall,
        server_cpu_fraction=None if server_cpu is None else server_cpu / load.wall,
        server_cpu_ms_per_token=None
        if server_cpu is None or not tokens
        else server_cpu * 1e3 / tokens,
    )
