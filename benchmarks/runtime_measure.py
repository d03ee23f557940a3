"""What the runtime benchmark measures, and how rounds of it are pooled.

Ask latency (sequential round trips, each timed), tell throughput (first send
to last message handled) and concurrent asks (aggregate rate of several
callers), each taken on both sides of :mod:`benchmarks.runtime_sides` in the
same event loop. :func:`compare` warms both sides up, then alternates which
goes first in each round so that drift favours neither; latency samples are
pooled over the rounds and rates are the median round.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from benchmarks.runtime_sides import BenchPing, Target, open_sides


@dataclass(frozen=True)
class Config:
    """How much work each measure does."""

    asks: int
    tells: int
    callers: int
    rounds: int
    warmup: int


@dataclass(frozen=True)
class Latency:
    """Round-trip latency figures of one side."""

    p50_us: float
    p99_us: float
    mean_us: float
    per_s: float

    @classmethod
    def of(cls, samples_ns: Sequence[int], elapsed_ns: int) -> Latency:
        """Summarise per-ask samples and the wall time of the loops that took them."""
        ordered = sorted(samples_ns)
        return cls(
            p50_us=_percentile(ordered, 0.50) / 1e3,
            p99_us=_percentile(ordered, 0.99) / 1e3,
            mean_us=statistics.fmean(ordered) / 1e3,
            per_s=len(ordered) / (elapsed_ns / 1e9),
        )


@dataclass(frozen=True)
class BackendResult:
    """Every figure taken on one backend, runtime and raw side by side."""

    backend: str
    ask_runtime: Latency
    ask_raw: Latency
    tell_runtime_per_s: float
    tell_raw_per_s: float
    concurrent_runtime_per_s: float
    concurrent_raw_per_s: float

    def rows(self, callers: int) -> list[tuple[str, float, float]]:
        """``(measure, runtime, raw)`` rows for the table."""
        rt, raw = self.ask_runtime, self.ask_raw
        concurrent = (self.concurrent_runtime_per_s, self.concurrent_raw_per_s)
        return [
            ("ask p50 (us)", rt.p50_us, raw.p50_us),
            ("ask p99 (us)", rt.p99_us, raw.p99_us),
            ("ask mean (us)", rt.mean_us, raw.mean_us),
            ("asks/s, 1 caller", rt.per_s, raw.per_s),
            (f"asks/s, {callers} callers", *concurrent),
            ("tells/s (BLOCK)", self.tell_runtime_per_s, self.tell_raw_per_s),
        ]


def _percentile(ordered: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


async def measure_latency(target: Target, n: int) -> tuple[list[int], int]:
    """Make ``n`` sequential round trips, timing each one.

    Args:
        target: The side to measure.
        n: Number of round trips.

    Returns:
        The per-ask durations and the whole loop's duration, in nanoseconds.
    """
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    with target.client() as ask:
        start = clock()
        for i in range(n):
            before = clock()
            answer = await ask(BenchPing(n=i))
            samples.append(clock() - before)
        elapsed = clock() - start
    if answer.n != n - 1:
        raise RuntimeError(f"echo answered {answer.n}, expected {n - 1}")
    return samples, elapsed


async def measure_concurrent(target: Target, n: int, callers: int) -> float:
    """Make about ``n`` round trips from ``callers`` concurrent callers.

    Args:
        target: The side to measure.
        n: Total round trips, split evenly between the callers.
        callers: Number of concurrent callers.

    Returns:
        Aggregate round trips per second.
    """
    each = max(1, n // callers)

    async def caller() -> None:
        with target.client() as ask:
            for i in range(each):
                await ask(BenchPing(n=i))

    gc.collect()
    start = time.perf_counter_ns()
    async with anyio.create_task_group() as tasks:
        for _ in range(callers):
            tasks.start_soon(caller)
    return each * callers / ((time.perf_counter_ns() - start) / 1e9)


async def measure_tells(target: Target, n: int) -> float:
    """Send ``n`` messages and wait until the last one has been handled.

    Args:
        target: The side to measure.
        n: Number of messages.

    Returns:
        Messages handled per second, first send to last handled.
    """
    tell = target.tell
    target.tally.arm(n)
    gc.collect()
    start = time.perf_counter_ns()
    for i in range(n):
        await tell(BenchPing(n=i))
    await target.tally.done.wait()
    return n / ((time.perf_counter_ns() - start) / 1e9)


@dataclass
class _Collected:
    """Raw figures of one side, accumulated over the rounds."""

    samples: list[int] = field(default_factory=list)
    elapsed_ns: int = 0
    tells: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)


async def _one_round(target: Target, config: Config, into: _Collected) -> None:
    samples, elapsed = await measure_latency(target, config.asks)
    into.samples.extend(samples)
    into.elapsed_ns += elapsed
    into.tells.append(await measure_tells(target, config.tells))
    into.concurrent.append(await measure_concurrent(target, config.asks, config.callers))


async def _warm_up(target: Target, config: Config) -> None:
    await measure_latency(target, config.warmup)
    await measure_tells(target, config.warmup)
    await measure_concurrent(target, config.warmup, config.callers)


async def compare(runtime: Target, raw: Target, config: Config, backend: str) -> BackendResult:
    """Warm both sides up, then run every measure for ``config.rounds`` rounds.

    Args:
        runtime: The actor runtime's side.
        raw: The raw memory object stream baseline.
        config: Work per measure.
        backend: Name of the running backend, to label the result.

    Returns:
        The figures of both sides.
    """
    sides = {"runtime": (runtime, _Collected()), "raw": (raw, _Collected())}
    for target, _ in sides.values():
        await _warm_up(target, config)
    for number in range(config.rounds):
        # Alternate which side goes first, so that drift does not favour one.
        order = list(sides.values())
        for target, collected in order if number % 2 == 0 else reversed(order):
            await _one_round(target, config, collected)
    rt, raw_c = sides["runtime"][1], sides["raw"][1]
    return BackendResult(
        backend=backend,
        ask_runtime=Latency.of(rt.samples, rt.elapsed_ns),
        ask_raw=Latency.of(raw_c.samples, raw_c.elapsed_ns),
        tell_runtime_per_s=statistics.median(rt.tells),
        tell_raw_per_s=statistics.median(raw_c.tells),
        concurrent_runtime_per_s=statistics.median(rt.concurrent),
        concurrent_raw_per_s=statistics.median(raw_c.concurrent),
    )


async def bench_backend(config: Config, backend: str) -> BackendResult:
    """Run every measure on the current backend, runtime and baseline.

    Args:
        config: Work per measure.
        backend: Name of the backend this coroutine runs on, to label the result.

    Returns:
        The figures of the backend this coroutine runs on.
    """
    async with open_sides() as (runtime, raw):
        return await compare(runtime, raw, config, backend)
