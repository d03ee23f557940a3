"""Micro-benchmark of the actor runtime against raw anyio memory object streams.

Run it with ``python -m benchmarks.runtime_bench`` (``make bench-runtime``). Every
figure is taken on both anyio backends, asyncio and trio, in one process, and is
set beside a *raw baseline* measured in the same event loop, in the same
rounds, so that the report reads as ratios rather than as absolute numbers that
only hold on one machine.

This module runs and reports; the two sides live in
:mod:`benchmarks.runtime_sides` and the measures in :mod:`benchmarks.runtime_measure`.

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
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from benchmarks.runtime_measure import BackendResult, Config, bench_backend
from benchmarks.runtime_sides import MAILBOX_CAPACITY

BACKENDS = ("asyncio", "trio")


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
