"""Two replicas behind Ray Serve against one plain server, side by side, as ratios.

Run with ``python -m benchmarks.replicas_bench`` (``make bench-replicas``; needs
the ray extra). Starts ``troupe serve`` and ``troupe serve --ray --replicas 2``
on one model with the same BLAS and alternates the same streaming load between
them. Reports:

* output tokens/s at 16 streams, and the ratio replicas / plain. On one
  machine the replicas share its cores, so this measures what the extra tier
  costs, not what a second machine would add;
* CPU milliseconds per generated token, split by where they are spent: the
  replicas (their actors and engine processes), the proxy tier (Serve's HTTP
  proxy and our ingress) and the rest of the Ray cluster; and an estimate of
  the throughput with each replica on a machine of its own (N times the plain
  server, capped by what one core of proxy tier can carry);
* prefix affinity: 32 long system prompts, each asked twice, routed by prefix
  and by Serve's own power-of-two-choices router (a second cluster, started
  and warmed after the first stops): in the second round, the share of prompt
  tokens read from a prefix cache, and requests per second. The plain server
  is there for reference: its one cache holds half as many entries as two.
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

STREAMS = 16
GROUPS = ("replicas", "proxy", "cluster")
SYSTEM = (
    "You are the support assistant of shop number {n}. Answer questions about orders, "
    "deliveries, returns and opening hours in two sentences, politely, in the customer's "
    "own language, and never invent an order number. "
) * 3


@dataclass
class Side:
    """One server and what was measured on it."""

    name: str
    server: ManagedServer
    tokens_per_s: list[float] = field(default_factory=list)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)


def _command(*extra: str) -> Callable[[str, int, Batching], list[str]]:
    def command(model: str, port: int, batching: Batching) -> list[str]:
        return [
            *(sys.executable, "-m", "api.cli", "serve", "--model", model, "--port", str(port)),
            *("--max-running", str(batching.decode), "--log-level", "warning", *extra),
        ]

    return command


def _ray(routing: str) -> list[str]:
    return ["--ray", "--replicas", "2", "--replica-cpus", "0.5", "--replica-routing", routing]


def _group(process: psutil.Process) -> str:
    """Where a process of the server's tree belongs (by its Ray process title)."""
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return "cluster"
    if "troupe-model" in title or "actors.generation.engine.worker" in title:
        return "replicas"
    if "ProxyActor" in title or "troupe-ingress" in title:
        return "proxy"
    return "cluster"


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the server's process tree, by group (a plain server: all replicas)."""
    root = psutil.Process(pid)
    totals = dict.fromkeys(GROUPS, 0.0)
    times = root.cpu_times()
    totals["cluster"] += times.user + times.system
    for child in root.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        totals[_group(child)] += child_times.user + child_times.system
    return totals


async def _measure(side: Side, args: argparse.Namespace, start: int) -> None:
    server = side.server
    assert server.pid is not None
    count = STREAMS * args.requests_per_client
    bodies = greedy_chat_bodies(server.model_name, count, args.max_tokens, start)
    before = _cpu(server.pid)
    load = await run_load(Target.from_url(server.url), bodies, STREAMS, timeout=300)
    after = _cpu(server.pid)
    failed = [o.error for o in load.outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{side.name}: {len(failed)} requests failed: {failed[:3]}")
    tokens = sum(o.tokens for o in load.outcomes)
    side.tokens_per_s.append(tokens / load.wall)
    for group in GROUPS:
        spent = after[group] - before[group]
        side.cpu_ms.setdefault(group, []).append(1000 * spent / tokens)


async def _affinity(server: ManagedServer, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Each of many system prompts asked twice, 16 requests at once; the second asks measured.

    The first round puts every prefix in some replica's cache; in the second,
    a request finds its prefix only on the replica that served the first.
    """
    limiter = anyio.CapacityLimiter(STREAMS)
    counts = {"cached": 0, "prompt": 0}

    async def ask(http: httpx.AsyncClient, shop: int, question: str) -> None:
        body = {
            "model": server.model_name,
            "system": SYSTEM.format(n=f"{tag}-{shop}"),
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8,
        }
        async with limiter:
            reply = await http.post(server.url + "/v1/messages", json=body)
        reply.raise_for_status()
        usage = reply.json()["usage"]
        counts["cached"] += usage["cache_read_input_tokens"]
        counts["prompt"] += usage["input_tokens"] + usage["cache_read_input_tokens"]

    async def ask_all(question: str) -> float:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=120) as http, anyio.create_task_group() as tg:
            for shop in range(args.prefixes):
                tg.start_soon(ask, http, shop, question)
        return time.monotonic() - started

    await ask_all("Where is my order?")
    counts.update(cached=0, prompt=0)
    wall = await ask_all("Can I return it?")
    return {
        "cache_hit_ratio": round(counts["cached"] / counts["prompt"], 3),
        "requests_per_s": round(args.prefixes / wall, 2),
    }


def _start(name: str, extra: Sequence[str], model: str, args: argparse.Namespace) -> Side:
    env = server_environment(None if args.blas == "none" else default_preload())
    kind = ServerKind(name, f"troupe ({name})", "/health/ready", _command(*extra))
    log_dir = args.out.parent / "replicas-logs"
    server = start_server(kind, model, Batching(decode=args.decode_batch), env, log_dir)
    return Side(name, server)


def _ready(side: Side) -> None:
    side.server.wait_ready(300)
    deadline = time.monotonic() + 300
    log = side.server.log_path
    while log is not None and "mlx-troupe: serving" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name} did not start:\n{side.server.log_tail()}")
        time.sleep(0.2)  # another process's log; no event to wait on


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    model = str(default_model_dir(args.size))
    sides = [_start("plain", (), model, args), _start("ray-prefix", _ray("prefix"), model, args)]
    affinity: dict[str, Any] = {}
    try:
        for side in sides:
            _ready(side)
        start = 0
        for round_number in range(args.rounds):
            for side in sides if round_number % 2 == 0 else sides[::-1]:
                await _measure(side, args, start)
                start += STREAMS * args.requests_per_client
        affinity["plain"] = await _affinity(sides[0].server, args, "plain")
        affinity["prefix"] = await _affinity(sides[1].server, args, "prefix")
        sides[1].server.stop()
        pow2 = _start("ray-pow2", _ray("pow2"), model, args)
        try:
            _ready(pow2)
            await _measure(pow2, args, start)  # warm, as the others are by now
            affinity["pow2"] = await _affinity(pow2.server, args, "pow2")
        finally:
            pow2.server.stop()
    finally:
        for side in sides:
            side.server.stop()
    return _report(args, sides, affinity)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(
    args: argparse.Namespace, sides: list[Side], affinity: dict[str, Any]
) -> dict[str, Any]:
    plain, ray = sides
    plain_tps, ray_tps = _median(plain.tokens_per_s), _median(ray.tokens_per_s)
    cpu = {side.name: {g: round(_median(v), 3) for g, v in side.cpu_ms.items()} for side in sides}
    for costs in cpu.values():
        costs["total"] = round(sum(costs.values()), 3)
    proxy_ms = cpu["ray-prefix"]["proxy"]
    # With each replica on a machine of its own, the replicas scale with their
    # number; the proxy tier (one ingress, one proxy) is what then caps them.
    proxy_ceiling = 1000 / proxy_ms if proxy_ms > 0 else float("inf")
    return {
        "model": args.size,
        "streams": STREAMS,
        "tokens_per_s": {
            "plain": round(plain_tps, 1),
            "ray_2_replicas": round(ray_tps, 1),
            "ratio": round(ray_tps / plain_tps, 3),
        },
        "cpu_ms_per_token": cpu,
        "proxy_share_of_cpu": round(proxy_ms / cpu["ray-prefix"]["total"], 3),
        "separate_machines_estimate_tokens_per_s": round(min(2 * plain_tps, proxy_ceiling), 1),
        "proxy_tier_ceiling_tokens_per_s_per_core": round(proxy_ceiling, 1),
        "affinity": affinity,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas_bench")
    parser.add_argument("--size", default="tiny", help="embedded model size")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--prefixes", type=int, default=32, help="system prompts, asked twice")
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--blas", choices=("auto", "none"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replicas.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = anyio.run(_run, args)
    write_report(args.out, "benchmarks.replicas_bench", argv, args.blas, started, result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
