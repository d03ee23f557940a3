"""What observability costs: serving with metrics, audit and request logs on vs off.

Run with ``python -m benchmarks.observability_bench`` (``make
bench-observability``). One process, one model, one server:

* **serving**: the real app on real hypercorn, 8 concurrent streaming
  clients (httpx, in the same process) running requests back to back.
  Rounds come in pairs, one on and one off back to back (ABBA order across
  pairs), on the *same* server, so both sides share the model, the BLAS, the
  warm prefix cache and any drift of the machine. "On" is the server as
  shipped: every request records a metrics event, submits an audit row (a
  SQLite file, written by the audit thread) and writes a JSON request log
  line (to a file). "Off" unbinds the metrics recorder, detaches the audit log
  and raises the log level, so none of the three happens. Reported: aggregate
  generated tokens/s of each side (median round), and the median of the
  pairs' on/off ratios with a seeded bootstrap 95 % interval and the
  quartiles (target: within 2 %). Rounds of 8 streams vary by several
  percent on their own (batching, two shared cores), so the interval is as
  much a result as the ratio.
* **per event**: what recording one request costs, each part timed alone
  over many repetitions: ``record`` (the non-blocking send to the metrics
  actor), the actor's accounting of the event, the metrics actor end to end
  (send until a later snapshot answers), the audit ``submit`` and the audit
  thread's SQLite write per row, and one JSON log line. Their sum, at the
  request rate of the "on" rounds, is the share of the CPUs that recording
  takes: the overhead the serving ratio is looking for, measured directly.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from actors.model.embedded import default_model_dir
from actors.tree import build_inference
from api.app import TroupeApp, build_asgi
from api.cli.serve import inference_settings, model_loader
from api.config.settings import Settings
from api.http.logs import JsonFormatter
from api.http.middleware import RequestIdFilter
from benchmarks.generation_bench import blas_library
from benchmarks.observability_costs import audit_costs, log_costs, metrics_costs

NO_EOS = {str(token): -100 for token in range(7)}
"""Keeps the tiny model's special tokens out, so every request runs to ``max_tokens``."""


@dataclass
class Bench:
    """A server running in this event loop, and the switch between on and off."""

    url: str
    app: TroupeApp
    model: str
    audit: Any

    def switch(self, on: bool) -> None:
        """Turn metrics events, audit rows and request log lines on or off."""
        system = self.app.lifespan.system
        assert system is not None
        self.app.observer.bind(system if on else None)
        self.app.reporter.attach_audit(self.audit if on else None)
        logging.getLogger().setLevel(logging.INFO if on else logging.WARNING)


@asynccontextmanager
async def serving(model: str, work: Path) -> AsyncIterator[Bench]:
    """The shipped app on hypercorn, audit log and JSON log file under ``work``."""
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    handler = logging.FileHandler(work / "server.log")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    try:
        async with _serving(model, work) as bench:
            yield bench
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        handler.close()


@asynccontextmanager
async def _serving(model: str, work: Path) -> AsyncIterator[Bench]:
    settings = Settings(model=model, port=0, audit_path=str(work / "audit.sqlite"))
    inference = build_inference(model_loader(settings), inference_settings(settings))
    app = TroupeApp(settings, inference)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    config = Config()
    config.bind = [f"fd://{os.dup(listener.fileno())}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        asgi: Any = build_asgi(app)  # hypercorn types ASGI apps with its own TypedDicts
        tg.start_soon(partial(hypercorn_serve, asgi, config, shutdown_trigger=stop.wait))
        await app.lifespan.started.wait()
        bench = Bench(
            f"http://127.0.0.1:{listener.getsockname()[1]}",
            app,
            app.model_name,
            app.audit,
        )
        try:
            yield bench
        finally:
            bench.switch(on=True)  # the app closes the audit log it holds
            stop.set()
    listener.close()


async def one_stream(http: httpx.AsyncClient, model: str, prompt: str, tokens: int) -> int:
    """One streaming completion; the tokens it generated (from its usage chunk)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": NO_EOS,
    }
    last = ""
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                last = line
    generated: int = json.loads(last[len("data: ") :])["usage"]["completion_tokens"]
    return generated


async def serving_round(bench: Bench, http: httpx.AsyncClient, args: Any) -> float:
    """Aggregate tokens/s of ``args.streams`` clients running ``args.requests`` each."""
    counts: list[int] = []

    async def client(n: int) -> None:
        for _ in range(args.requests):
            counts.append(await one_stream(http, bench.model, f"Stream {n}: the sea", args.tokens))

    gc.collect()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(args.streams):
            tg.start_soon(client, n)
    return sum(counts) / (time.perf_counter() - start)


async def serving_ab(bench: Bench, args: Any) -> dict[str, Any]:
    """Pairs of rounds, one on and one off back to back (ABBA order across pairs).

    Each pair gives a ratio; their median is the figure, so that a slow
    stretch of the machine (two shared cores) weighs on both sides of the
    pairs it hits rather than on one side of the result.
    """
    rates: dict[str, list[float]] = {"on": [], "off": []}
    ratios: list[float] = []
    limits = httpx.Limits(max_connections=args.streams * 2)
    async with httpx.AsyncClient(base_url=bench.url, timeout=120, limits=limits) as http:
        await serving_round(bench, http, args)  # warm-up: kernels, the prefix cache
        for pair in range(args.rounds):
            order = ("on", "off") if pair % 4 in (0, 3) else ("off", "on")
            rate: dict[str, float] = {}
            for side in order:
                bench.switch(on=side == "on")
                rate[side] = await serving_round(bench, http, args)
                rates[side].append(rate[side])
            ratios.append(rate["on"] / rate["off"])
    on_requests = (1 + args.rounds) * args.streams * args.requests  # the warm-up ran on
    await anyio.to_thread.run_sync(check_switch, bench, on_requests)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    seconds_on = sum(args.streams * args.requests * args.tokens / rate for rate in rates["on"])
    return {
        "streams": args.streams,
        "tokens_per_request": args.tokens,
        "requests_per_stream_per_round": args.requests,
        "pairs": args.rounds,
        "on_tok_s": statistics.median(rates["on"]),
        "off_tok_s": statistics.median(rates["off"]),
        "ratio_on_to_off": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "ratio_ci95": median_ci95(ratios),
        "on_requests_per_s": args.rounds * args.streams * args.requests / seconds_on,
        "rounds_on_tok_s": rates["on"],
        "rounds_off_tok_s": rates["off"],
    }


def median_ci95(values: list[float], resamples: int = 4000) -> list[float]:
    """A 95 % bootstrap interval of the median of ``values`` (seeded: reruns agree)."""
    draw = random.Random(0)
    medians = sorted(
        statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples)
    )
    return [medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]]


def check_switch(bench: Bench, on_requests: int) -> None:
    """Only the rounds that were on were recorded: the comparison compares what it says."""
    recorded = bench.app.inference.metrics.totals.completed
    assert bench.audit is not None and bench.audit.writer.flush(timeout=60)
    written = bench.audit.writer.statistics().written
    if recorded != on_requests or written != on_requests:
        raise RuntimeError(f"{on_requests} requests were on; {recorded} counted, {written} audited")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measures, in one process."""
    model = args.model or str(default_model_dir(args.size))
    load_before = os.getloadavg()[0]  # how quiet the machine was before this run loaded it
    with tempfile.TemporaryDirectory(prefix="troupe-obs-bench-") as tmp:
        work = Path(tmp)
        async with serving(model, work) as bench:
            ab = await serving_ab(bench, args)
        costs = await metrics_costs(args.events)
        costs |= audit_costs(work, args.events)
        costs |= log_costs(work, args.events)
    parts = ("record_us", "accounting_us", "audit_submit_us", "audit_written_per_row_us")
    costs["per_request_total_us"] = sum(costs[p] for p in parts) + costs["log_line_us"]
    # What the parts add up to at the request rate the "on" rounds ran, as a
    # share of the machine's CPU time: the overhead the serving ratio looks for.
    cpu = costs["per_request_total_us"] * 1e-6 * ab["on_requests_per_s"] / (os.cpu_count() or 1)
    ab["recording_cpu_share"] = cpu
    return {
        "serving": ab,
        "per_event": costs,
        "environment": {
            "model": model if args.model else f"embedded {args.size}",
            "blas": blas_library(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
    }


def report(result: dict[str, Any]) -> str:
    """A readable summary of ``result``."""
    ab, costs, env = result["serving"], result["per_event"], result["environment"]
    apart = abs(1.0 - ab["ratio_on_to_off"]) * 100
    low, high = ab["ratio_quartiles"]
    ci_low, ci_high = ab["ratio_ci95"]
    lines = [
        f"model {env['model']}, BLAS: {env['blas']}, {env['cpus']} CPUs "
        f"(load average {env['load_average_before']:.2f} before the run)",
        f"{ab['streams']} concurrent streams, {ab['tokens_per_request']} tokens a request, "
        f"{ab['pairs']} pairs of rounds (on and off back to back)",
        f"observability on : {ab['on_tok_s']:8.1f} tok/s (median round)",
        f"observability off: {ab['off_tok_s']:8.1f} tok/s (median round)",
        f"on/off, median of the pairs: {ab['ratio_on_to_off']:.4f}x ({apart:.2f} % apart; "
        f"target <= 2 %), 95 % interval {ci_low:.4f}x to {ci_high:.4f}x, "
        f"quartiles {low:.4f}x to {high:.4f}x",
        f"recording at {ab['on_requests_per_s']:.1f} requests/s: "
        f"{ab['recording_cpu_share'] * 100:.3f} % of the CPUs (from the costs below)",
        "",
        "per request, recording costs (microseconds):",
    ]
    for key, value in costs.items():
        lines.append(f"  {key:<26} {value:8.2f}")
    return "\n".join(lines)


def serving_options(prog: str, rounds: int) -> argparse.ArgumentParser:
    """The options of a paired on/off serving run (this one's, and the tracing bench's)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--model", help="model directory or hub id (default: embedded)")
    parser.add_argument("--size", default="tiny", help="embedded model size (default: tiny)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streaming clients")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=rounds, help="pairs of rounds (on, off)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = serving_options("python -m benchmarks.observability_bench", rounds=100)
    parser.add_argument("--events", type=int, default=20_000, help="repetitions per cost")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the report."""
    args = parse(argv)
    result = anyio.run(run, args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
