"""The engine in its own process against the engine on a thread, side by side, as ratios.

Run with ``python -m benchmarks.engine_process_bench`` (``make bench-engine``).
Starts two ``troupe serve`` processes on one model, ``--engine process`` (the
default) and ``--engine thread``, with the same BLAS, and alternates the same
streaming load between them, so both see the same machine state. Reports:

* output tokens/s at each concurrency (default 1, 16 and 64 streams), and the
  ratio process / thread;
* CPU seconds per generated token, of the server's process and, for the
  process side, of its engine process, read with psutil;
* restart: the time from an engine death to the next token served (the
  server's own ``recovery_seconds``), for SIGKILL of the engine process, and
  for an exception in the engine thread (the closest the thread side has:
  a native crash there ends the whole server).

With ``--baseline DIR`` (a checkout of an earlier commit, e.g. made with
``git worktree add DIR COMMIT``) the two sides are both ``--engine process``:
``baseline`` runs DIR's code and ``current`` this tree's, under the same load
in alternation, so a change to the engine is measured before/after in one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
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

ADMIN = "bench-admin"
SIDES = ("process", "thread")
BEFORE_AFTER = ("baseline", "current")


@dataclass
class Side:
    """One server and what was measured on it."""

    name: str
    server: ManagedServer
    tokens_per_s: dict[int, list[float]] = field(default_factory=dict)
    cpu_per_token_ms: dict[str, list[float]] = field(default_factory=dict)


def _command(engine: str) -> Any:
    def command(model: str, port: int, batching: Batching) -> list[str]:
        return [
            *(sys.executable, "-m", "api.cli", "serve", "--model", model, "--port", str(port)),
            *("--max-running", str(batching.decode), "--engine", engine),
            *("--fault-injection", "--admin-key", ADMIN, "--log-level", "warning"),
        ]

    return command


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the server (``parent``) and of its children (``engine``)."""
    parent = psutil.Process(pid)
    times = parent.cpu_times()
    children = 0.0
    for child in parent.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        children += child_times.user + child_times.system
    return {"parent": times.user + times.system, "engine": children}


async def _measure(side: Side, level: int, args: argparse.Namespace, start: int) -> None:
    server = side.server
    assert server.pid is not None
    count = level * args.requests_per_client
    bodies = greedy_chat_bodies(server.model_name, count, args.max_tokens, start)
    before = _cpu(server.pid)
    load = await run_load(Target.from_url(server.url), bodies, level, timeout=300)
    after = _cpu(server.pid)
    failed = [o.error for o in load.outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{side.name}: {len(failed)} requests failed: {failed[:3]}")
    tokens = sum(o.tokens for o in load.outcomes)
    side.tokens_per_s.setdefault(level, []).append(tokens / load.wall)
    for part in ("parent", "engine"):
        spent = after[part] - before[part]
        side.cpu_per_token_ms.setdefault(f"{part}@{level}", []).append(1000 * spent / tokens)


def _recoveries(server: ManagedServer) -> list[float]:
    reply = httpx.get(
        server.url + "/v1/supervisor", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    return list(reply.json()["engine"]["recovery_seconds"])


async def _restarts(side: Side, kills: int, model: str) -> list[float]:
    """Kill (or crash) the engine ``kills`` times under 16 streams; the recovery times."""
    server = side.server
    headers = {"authorization": f"Bearer {ADMIN}"}
    stop = anyio.Event()

    async def keep_streaming() -> None:
        n = 0
        while not stop.is_set():
            bodies = greedy_chat_bodies(model, 16, 32, 10_000 + n)
            await run_load(Target.from_url(server.url), bodies, 16, timeout=300)
            n += 16

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30, headers=headers) as http,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(keep_streaming)
        for done in range(kills):
            while len(_recoveries(server)) < done:  # noqa: ASYNC110 - another process's state
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # let the streams get going on the new engine
            if side.name != "thread":
                engine = (await http.get("/v1/supervisor")).json()["engine"]["process"]
                os.kill(engine["pid"], signal.SIGKILL)
            else:
                await http.post("/admin/faults", json={"kind": "engine_crash", "after_tokens": 1})
        while len(_recoveries(server)) < kills:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        stop.set()
    return _recoveries(server)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def _side_setup(name: str, args: argparse.Namespace) -> tuple[str, dict[str, str], Path | None]:
    """The ``--engine`` a side runs, its environment and where it runs (the baseline's tree)."""
    env = server_environment(None if args.blas == "none" else default_preload())
    if name != "baseline":
        return ("process" if name in BEFORE_AFTER else name), env, None
    # The server and its engine process run in DIR and import DIR's code first.
    tree = args.baseline.resolve()
    env["PYTHONPATH"] = str(tree)
    return "process", env, tree


async def _run(args: argparse.Namespace, size: str) -> dict[str, Any]:
    model = str(default_model_dir(size))
    log_dir = args.out.parent / f"engine-process-logs-{size}"
    sides: list[Side] = []
    try:
        for name in BEFORE_AFTER if args.baseline else SIDES:
            engine, env, cwd = _side_setup(name, args)
            kind = ServerKind(
                name, f"troupe --engine {engine} ({name})", "/health/ready", _command(engine)
            )
            batching = Batching(decode=args.decode_batch)
            server = start_server(kind, model, batching, env, log_dir.resolve(), cwd=cwd)
            sides.append(Side(name, server))
        for side in sides:
            side.server.wait_ready(300)
        start = 0
        for round_number in range(args.rounds):
            for level in args.levels:
                order = sides if round_number % 2 == 0 else sides[::-1]
                for side in order:
                    await _measure(side, level, args, start)
                    start += level * args.requests_per_client
        restarts = {s.name: await _restarts(s, args.kills, s.server.model_name) for s in sides}
    finally:
        for side in sides:
            side.server.stop()
    return _report(size, sides, restarts)


def _report(size: str, sides: list[Side], restarts: dict[str, list[float]]) -> dict[str, Any]:
    """The figures; ``ratio`` is the first side's over the second's (process/thread,
    or current/baseline)."""
    first, second = sides if sides[0].name != "baseline" else sides[::-1]
    levels = sorted(first.tokens_per_s)
    return {
        "model": size,
        "tokens_per_s": {
            str(level): {
                first.name: round(_median(first.tokens_per_s[level]), 1),
                second.name: round(_median(second.tokens_per_s[level]), 1),
                "ratio": round(
                    _median(first.tokens_per_s[level]) / _median(second.tokens_per_s[level]), 3
                ),
            }
            for level in levels
        },
        "cpu_ms_per_token": {
            side.name: {key: round(_median(v), 3) for key, v in side.cpu_per_token_ms.items()}
            for side in sides
        },
        "restart_to_next_token_ms": {
            name: {
                "p50": round(_percentile(values, 50) * 1000, 1),
                "p95": round(_percentile(values, 95) * 1000, 1),
                "samples": len(values),
            }
            for name, values in restarts.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_process_bench")
    parser.add_argument("--sizes", default="tiny,small", help="embedded model sizes")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level")
    parser.add_argument("--kills", type=int, default=5, help="engine deaths per side")
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--blas", choices=("auto", "none"), default="auto")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier commit: measure it against this tree, both --engine process",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-process.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = [anyio.run(_run, args, size) for size in args.sizes.split(",")]
    write_report(
        args.out, "benchmarks.engine_process_bench", argv, args.blas, started, results=results
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
