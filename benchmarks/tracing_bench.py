"""What tracing costs: serving with OpenTelemetry spans exported vs not, side by side.

Run with ``python -m benchmarks.tracing_bench`` (``make bench-tracing``). The
same design as :mod:`benchmarks.observability_bench`: one server in this
process (the engine on a thread, so its spans are recorded here too), 8
concurrent streaming clients, rounds in pairs, one traced and one not, back
to back (ABBA order across pairs), on the same server. "On" gives every
request its server spans (the request, admission, tokenization, the stream's
end) and its engine spans (queue, prefill, decode), batched and exported over
OTLP/HTTP to a receiver in another process that decodes them, as a collector
on the same host would. "Off" is the shipped default: OpenTelemetry's no-op
tracer. Reported: each side's aggregate tokens/s (median round) and the
median of the pairs' on/off ratios with a bootstrap 95 % interval (target:
within 3 %). The run checks that exactly the "on" requests reached the
receiver, so the comparison compares what it says.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from actors.model.embedded import default_model_dir
from actors.telemetry import TracingConfig, start_tracing, stop_tracing
from api.http.tracing import RequestTracing
from benchmarks.generation_bench import blas_library
from benchmarks.observability_bench import (
    Bench,
    median_ci95,
    serving,
    serving_options,
    serving_round,
)

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
roots = 0
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global roots
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        roots += sum(1 for r in request.resource_spans for s in r.scope_spans
                     for span in s.spans if span.kind == 2)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def do_GET(self):
        answer = str(roots).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
"""An OTLP/HTTP receiver that decodes every export and counts request spans."""


@contextmanager
def receiver() -> Iterator[str]:
    """A receiver in a process of its own; its base URL."""
    command = [sys.executable, "-c", RECEIVER]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            yield f"http://127.0.0.1:{int(process.stdout.readline())}"
        finally:
            process.kill()


async def tracing_ab(bench: Bench, traced: RequestTracing, args: Any) -> dict[str, Any]:
    """Pairs of rounds, traced and not, back to back (ABBA across pairs)."""
    reporter = bench.app.reporter
    rates: dict[str, list[float]] = {"on": [], "off": []}
    ratios: list[float] = []
    limits = httpx.Limits(max_connections=args.streams * 2)
    async with httpx.AsyncClient(base_url=bench.url, timeout=120, limits=limits) as http:
        await serving_round(bench, http, args)  # warm-up, untraced
        for pair in range(args.rounds):
            order = ("on", "off") if pair % 4 in (0, 3) else ("off", "on")
            rate: dict[str, float] = {}
            for side in order:
                reporter.tracing = traced if side == "on" else RequestTracing()
                rate[side] = await serving_round(bench, http, args)
                rates[side].append(rate[side])
            ratios.append(rate["on"] / rate["off"])
    reporter.tracing = RequestTracing()
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
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
        "rounds_on_tok_s": rates["on"],
        "rounds_off_tok_s": rates["off"],
    }


def received_roots(url: str, expected: int, timeout: float = 30.0) -> int:
    """The request spans the receiver decoded, once ``expected`` arrived (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        roots = int(httpx.get(url, timeout=10).text)
        if roots >= expected or time.monotonic() > deadline:
            return roots
        time.sleep(0.1)  # another process: nothing to wait on but its count


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The paired rounds, then the check that only the traced requests were exported."""
    model = args.model or str(default_model_dir(args.size))
    load_before = os.getloadavg()[0]
    with receiver() as url, tempfile.TemporaryDirectory(prefix="troupe-trace-bench-") as tmp:
        provider = start_tracing(TracingConfig(endpoint=url + "/v1/traces"), "server")
        try:
            async with serving(model, Path(tmp)) as bench:
                ab = await tracing_ab(bench, RequestTracing.from_provider(provider), args)
        finally:
            stop_tracing(provider)
        expected = args.rounds * args.streams * args.requests
        roots = await anyio.to_thread.run_sync(received_roots, url, expected)
    if roots != expected:
        raise RuntimeError(f"{expected} requests were traced; the receiver decoded {roots}")
    ab["spans_exported_requests"] = roots
    return {
        "serving": ab,
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
    ab, env = result["serving"], result["environment"]
    apart = abs(1.0 - ab["ratio_on_to_off"]) * 100
    low, high = ab["ratio_quartiles"]
    ci_low, ci_high = ab["ratio_ci95"]
    return "\n".join(
        [
            f"model {env['model']}, BLAS: {env['blas']}, {env['cpus']} CPUs "
            f"(load average {env['load_average_before']:.2f} before the run)",
            f"{ab['streams']} concurrent streams, {ab['tokens_per_request']} tokens a request, "
            f"{ab['pairs']} pairs of rounds (traced and not, back to back)",
            f"tracing on : {ab['on_tok_s']:8.1f} tok/s (median round)",
            f"tracing off: {ab['off_tok_s']:8.1f} tok/s (median round)",
            f"on/off, median of the pairs: {ab['ratio_on_to_off']:.4f}x ({apart:.2f} % apart; "
            f"target <= 3 %), 95 % interval {ci_low:.4f}x to {ci_high:.4f}x, "
            f"quartiles {low:.4f}x to {high:.4f}x",
            f"request traces the receiver decoded: {ab['spans_exported_requests']} "
            "(exactly the traced requests)",
        ]
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    return serving_options("python -m benchmarks.tracing_bench", rounds=40).parse_args(argv)


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
