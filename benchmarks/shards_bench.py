"""One model split over two processes against the same model whole, side by side, as ratios.

Run with ``python -m benchmarks.shards_bench`` (``make bench-shards``). Starts
``troupe serve`` and ``troupe serve --shards 2`` on one model with the same
BLAS, and alternates the same greedy streaming load between them. Reports, at
each concurrency (default 1 and 16 streams), output tokens/s and the ratio
split / whole, and CPU milliseconds per generated token of each server with
all its processes (the split one has two engine ranks).

On one machine both ranks share its cores and memory bandwidth: this measures
what the split costs (the ring's collectives: two per layer for the model, one
per step for the turn), not what a second machine adds. Splitting pays when a
model does not fit one machine, or when each rank has cores of its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil

from actors.model.embedded import default_model_dir
from benchmarks.harness.environment import default_preload, write_report
from benchmarks.harness.loadgen import Target, greedy_chat_bodies, run_load
from benchmarks.harness.servers import (
    Batching,
    ManagedServer,
    ServerKind,
    server_environment,
    start_server,
)

SIDES = {"whole": 1, "split": 2}


@dataclass
class Side:
    """One server and what was measured on it."""

    name: str
    server: ManagedServer
    tokens_per_s: dict[int, list[float]] = field(default_factory=dict)
    cpu_ms_per_token: dict[int, list[float]] = field(default_factory=dict)


def _command(shards: int) -> Callable[[str, int, Batching], list[str]]:
    def command(model: str, port: int, batching: Batching) -> list[str]:
        return [
            *(sys.executable, "-m", "api.cli", "serve", "--model", model, "--port", str(port)),
            *("--max-running", str(batching.decode), "--shards", str(shards)),
            *("--log-level", "warning"),
        ]

    return command


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of the server and every process under it (engine ranks included)."""
    total = 0.0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _measure(side: Side, level: int, args: argparse.Namespace, start: int) -> None:
    server = side.server
    assert server.pid is not None
    bodies = greedy_chat_bodies(
        server.model_name, level * args.requests_per_client, args.max_tokens, start
    )
    before = _cpu_seconds(server.pid)
    load = await run_load(Target.from_url(server.url), bodies, level, timeout=300)
    spent = _cpu_seconds(server.pid) - before
    failed = [o.error for o in load.outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{side.name}: {len(failed)} requests failed: {failed[:3]}")
    tokens = sum(o.tokens for o in load.outcomes)
    side.tokens_per_s.setdefault(level, []).append(tokens / load.wall)
    side.cpu_ms_per_token.setdefault(level, []).append(1000 * spent / tokens)


async def _run(args: argparse.Namespace, size: str) -> dict[str, Any]:
    model = str(default_model_dir(size))
    env = server_environment(None if args.blas == "none" else default_preload())
    log_dir = args.out.parent / f"shards-{size}-logs"
    sides: list[Side] = []
    try:
        for name, shards in SIDES.items():
            kind = ServerKind(name, f"troupe --shards {shards}", "/health/ready", _command(shards))
            server = start_server(kind, model, Batching(decode=args.decode_batch), env, log_dir)
            sides.append(Side(name, server))
        for side in sides:
            side.server.wait_ready(300)
        start = 0
        for round_number in range(args.rounds):
            for level in args.levels:
                for side in sides if round_number % 2 == 0 else sides[::-1]:
                    await _measure(side, level, args, start)
                    start += level * args.requests_per_client
    finally:
        for side in sides:
            side.server.stop()
    return _report(size, sides)


def _report(size: str, sides: list[Side]) -> dict[str, Any]:
    whole, split = sides
    median = statistics.median
    return {
        "model": size,
        "by_streams": {
            str(level): {
                "tokens_per_s": {s.name: round(median(s.tokens_per_s[level]), 1) for s in sides},
                "ratio_split_whole": round(
                    median(split.tokens_per_s[level]) / median(whole.tokens_per_s[level]), 3
                ),
                "cpu_ms_per_token": {
                    s.name: round(median(s.cpu_ms_per_token[level]), 3) for s in sides
                },
            }
            for level in sorted(whole.tokens_per_s)
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards_bench")
    parser.add_argument("--sizes", default="tiny,small", help="embedded model sizes")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level")
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--blas", choices=("auto", "none"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/shards.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = [anyio.run(_run, args, size) for size in args.sizes.split(",")]
    write_report(args.out, "benchmarks.shards_bench", argv, args.blas, started, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
