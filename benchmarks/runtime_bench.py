"""Micro-benchmark of the actor runtime against raw anyio memory object streams.

Run it with ``python -m benchmarks.runtime_bench`` (``make bench-runtime``). Every
figure is taken on both anyio backends, asyncio and trio, in one process, and is
set beside a *raw baseline* measured in the same event loop, in the same
rounds, so that the report reads as ratios rather than as absolute numbers that
only hold on one machine.

What is measured, per backend:

* **ask latency**: sequential ``ActorRef.ask`` round trips to an echo actor,
  each timed with :func:`time.perf_counter_ns`; reported as p50, p99 and mean
  in microseconds, plus asks per second over the whole loop. The baseline is
  the same request/response done by hand: a task reads ``(request, reply
  stream)`` pairs from a memory object stream as large as the actor's mailbox
  and answers on a one-slot stream per caller, which is what a mailbox
  envelope and its ``Reply`` do, minus the runtime.
* **tell throughput**: ``ActorRef.tell`` of N messages into a ``BLOCK``-policy
  mailbox, timed from the first send until the actor has handled the last
  one (it counts and sets an event at N; nothing sleeps). The baseline is
  ``MemoryObjectSendStream.send`` of N items to a task that counts them.
* **concurrent asks**: several callers (8 by default) asking the echo actor at
  once; aggregate asks per second, against the same callers on the raw echo.

Every message is a fresh msgspec ``Message`` struct on both sides, so the
ratio isolates what the runtime adds: envelopes, the ``Reply`` event, the
ask deadline's cancel scope, the ``BLOCK`` policy's timeout scope and the
actor's message loop. Each measure runs ``--rounds`` times after a warm-up,
alternating which side goes first; latency samples are pooled over the rounds
and rates are the median round. The garbage collector stays on (as it would
in a server) but is run before each timed section.

How to read the table: ``runtime/raw`` is the runtime's figure divided by the
baseline's. For latencies a ratio above 1 means the runtime is that many times
slower; for rates (``/s``) a ratio below 1 means the same thing. The absolute
values depend on the machine; the ratios are what to compare between commits.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime import (
    Actor,
    ActorRef,
    ActorSystem,
    ChildSpec,
    MailboxConfig,
    Message,
    Overflow,
    SupervisorSpec,
)

BACKENDS = ("asyncio", "trio")
MAILBOX_CAPACITY = 1024
"""Capacity of both actors' mailboxes and of the baseline's request streams."""
ASK_TIMEOUT = 10.0
"""Deadline of every ask: far beyond any round trip, so it never fires."""


class BenchPing(Message, frozen=True):
    """A request; the echo actor answers it with a :class:`BenchPong` of the same ``n``."""

    n: int = 0


class BenchPong(Message, frozen=True):
    """The echo actor's answer."""

    n: int = 0


AskFn = Callable[[BenchPing], Awaitable[BenchPong]]
"""One caller's way to make a round trip."""
RawRequest = tuple[BenchPing, MemoryObjectSendStream[BenchPong]]
"""What the baseline's echo task reads: a request and where to answer it."""


class Tally:
    """Counts handled messages and sets :attr:`done` once the target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = anyio.Event()

    def arm(self, target: int) -> None:
        """Start counting again towards ``target`` (with a fresh event)."""
        self.count = 0
        self.target = target
        self.done = anyio.Event()

    def hit(self) -> None:
        """Count one message."""
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Echo(Actor):
    """Answers every :class:`BenchPing` with a :class:`BenchPong`."""

    async def handle(self, message: Message) -> Message | None:
        """Echo the request's number back."""
        assert isinstance(message, BenchPing)
        return BenchPong(n=message.n)


class Counter(Actor):
    """Counts the messages it is told into a shared :class:`Tally`."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    async def handle(self, message: Message) -> Message | None:
        """Count the message; answer nothing."""
        self._tally.hit()
        return None


@dataclass(frozen=True)
class Target:
    """One side of the comparison: how to ask, how to tell, and what counts tells."""

    client: Callable[[], AbstractContextManager[AskFn]]
    """Opens one caller (each concurrent caller opens its own)."""
    tell: Callable[[BenchPing], Awaitable[None]]
    tally: Tally


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


@contextmanager
def _actor_client(ref: ActorRef) -> Iterator[AskFn]:
    async def ask(message: BenchPing) -> BenchPong:
        return await ref.ask(message, timeout=ASK_TIMEOUT, expect=BenchPong)

    yield ask


@contextmanager
def _raw_client(requests: MemoryObjectSendStream[RawRequest]) -> Iterator[AskFn]:
    reply_send, reply_receive = anyio.create_memory_object_stream[BenchPong](1)
    with reply_send, reply_receive:

        async def ask(message: BenchPing) -> BenchPong:
            await requests.send((message, reply_send))
            return await reply_receive.receive()

        yield ask


async def _raw_echo(requests: MemoryObjectReceiveStream[RawRequest]) -> None:
    """The baseline's echo: answer each request on its own reply stream."""
    with requests:
        async for message, reply in requests:
            reply.send_nowait(BenchPong(n=message.n))


async def _raw_counter(items: MemoryObjectReceiveStream[BenchPing], tally: Tally) -> None:
    """The baseline's counter: count each item received."""
    with items:
        async for _ in items:
            tally.hit()


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


def _system_spec(tally: Tally) -> SupervisorSpec:
    mailbox = MailboxConfig(capacity=MAILBOX_CAPACITY, overflow=Overflow.BLOCK)
    return SupervisorSpec(
        "root",
        [
            ChildSpec("echo", Echo, mailbox=mailbox),
            ChildSpec("counter", partial(Counter, tally), mailbox=mailbox),
        ],
    )


async def bench_backend(config: Config, backend: str) -> BackendResult:
    """Run every measure on the current backend, runtime and baseline.

    Args:
        config: Work per measure.
        backend: Name of the backend this coroutine runs on, to label the result.

    Returns:
        The figures of the backend this coroutine runs on.
    """
    runtime_tally, raw_tally = Tally(), Tally()
    requests, request_inbox = anyio.create_memory_object_stream[RawRequest](MAILBOX_CAPACITY)
    items, item_inbox = anyio.create_memory_object_stream[BenchPing](MAILBOX_CAPACITY)
    async with (
        ActorSystem(_system_spec(runtime_tally)) as system,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_raw_echo, request_inbox)
        tasks.start_soon(_raw_counter, item_inbox, raw_tally)
        # Closing the baseline's send ends stop its tasks, so the group can exit.
        with requests, items:
            echo, counter = system.ref("echo"), system.ref("counter")
            runtime = Target(partial(_actor_client, echo), counter.tell, runtime_tally)
            raw = Target(partial(_raw_client, requests), items.send, raw_tally)
            result = await compare(runtime, raw, config, backend)
    return result


def environment() -> dict[str, Any]:
    """Where the figures were taken: interpreter, platform, library versions, CPUs."""
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "anyio": importlib.metadata.version("anyio"),
        "trio": importlib.metadata.version("trio"),
        "msgspec": importlib.metadata.version("msgspec"),
    }


def format_table(results: Sequence[BackendResult], callers: int) -> str:
    """The results as a fixed-width table, one row per backend and measure.

    Args:
        results: Figures per backend.
        callers: Number of concurrent callers, for the row label.

    Returns:
        The table, with a header line and a closing legend.
    """
    header = f"{'backend':<8} {'measure':<20} {'runtime':>12} {'raw':>12} {'runtime/raw':>12}"
    lines = [header, "-" * len(header)]
    for result in results:
        for measure, value, raw in result.rows(callers):
            lines.append(
                f"{result.backend:<8} {measure:<20} {_fmt(value):>12} {_fmt(raw):>12} "
                f"{value / raw:>12.2f}"
            )
    lines.append("-" * len(header))
    lines.append(
        "runtime/raw: for latencies (us) above 1 means slower; for rates (/s) below 1 means slower."
    )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def to_json(results: Sequence[BackendResult], config: Config) -> dict[str, Any]:
    """The figures, ratios, configuration and environment as a JSON-ready dict."""
    backends: dict[str, Any] = {}
    for result in results:
        figures = asdict(result)
        del figures["backend"]
        figures["ratios"] = {
            measure: value / raw for measure, value, raw in result.rows(config.callers)
        }
        backends[result.backend] = figures
    return {"environment": environment(), "config": asdict(config), "backends": backends}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.runtime_bench",
        description="Actor runtime vs raw anyio streams, on asyncio and trio.",
    )
    parser.add_argument("--asks", type=_positive, default=10_000, help="asks per round")
    parser.add_argument("--tells", type=_positive, default=100_000, help="tells per round")
    parser.add_argument("--callers", type=_positive, default=8, help="concurrent callers")
    parser.add_argument("--rounds", type=_positive, default=3, help="rounds per measure")
    parser.add_argument("--warmup", type=_positive, default=2_000, help="warm-up operations")
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check it works")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on both backends, print the table, optionally write JSON.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)
    if args.quick:
        config = Config(asks=200, tells=2_000, callers=args.callers, rounds=1, warmup=50)
    else:
        config = Config(args.asks, args.tells, args.callers, args.rounds, args.warmup)
    env = environment()
    print(
        f"runtime_bench: python {env['python']}, anyio {env['anyio']}, trio {env['trio']}, "
        f"{env['cpus_usable']} usable CPUs, {env['platform']}"
    )
    print(
        f"per round: {config.asks:,} asks, {config.tells:,} tells; {config.rounds} rounds, "
        f"{config.warmup:,} warm-up; mailbox capacity {MAILBOX_CAPACITY}\n"
    )
    results = [anyio.run(bench_backend, config, backend, backend=backend) for backend in BACKENDS]
    print(format_table(results, config.callers))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results, config), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
