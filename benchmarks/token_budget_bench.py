"""The engine's token budget against no budget (each prompt's 256-token chunks), side by side.

Run with ``python -m benchmarks.token_budget_bench`` (``make bench-budget``;
default model: the packaged SmolLM2, float32 as ``troupe serve`` lays it out
on a CPU). Each side is the engine itself (:class:`Engine` on its thread, no
HTTP), one model shared, the sides alternating round by round, so only the
scheduling differs. Measures:

* **stall**: 8 greedy streams decode; once each has produced its warm-up
  tokens, a prompt of ``--long`` tokens arrives. The running streams'
  inter-token gaps before it arrived and while it was prefilled (p50, p99,
  max), and the long prompt's time to its first token.
* **throughput**: aggregate tokens/s of 1, 8 and 32 requests (short prompts,
  ``--tokens`` each), from submission to the last token.

Budgets are given as ``--budgets 0,64,128`` (0: no budget, the FIFO chunking
before it); ratios are against the first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.protocol import (
    Failed,
    Finished,
    Generate,
    SamplingParams,
    StreamEvent,
    TokenChunk,
)
from actors.model.loader import LoadedModel, load_model
from actors.model.packaged import packaged_model
from actors.model.weights import fit_weights
from benchmarks.generation_bench import blas_library

STREAMS = 8
WARM_TOKENS = 12
"""Tokens each stream produces before the window before the long prompt opens."""
BEFORE_TOKENS = 16
"""Tokens each stream produces in the window before the long prompt arrives."""


class Recorder:
    """Every event's arrival time, per request; wakes waiters as tokens arrive."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.tokens: dict[str, int] = defaultdict(int)
        self.ended: set[str] = set()
        self.changed = threading.Condition()

    def emit(self, events: list[StreamEvent]) -> None:
        now = time.perf_counter()
        with self.changed:
            for event in events:
                match event:
                    case TokenChunk(request_id=rid, token_ids=ids):
                        self.times[rid].append(now)
                        self.tokens[rid] += len(ids)
                    case Finished(request_id=rid) | Failed(request_id=rid):
                        self.times[rid].append(now)
                        self.ended.add(rid)
            self.changed.notify_all()

    def wait(self, done: Any, timeout: float = 600.0) -> None:
        with self.changed:
            if not self.changed.wait_for(done, timeout):
                raise TimeoutError("the engine stopped making progress")


def started_engine(loaded: LoadedModel, budget: int, recorder: Recorder) -> Engine:
    config = EngineConfig(max_batched_tokens=budget)
    engine = Engine(loaded, recorder.emit, print, config=config)
    engine.start()
    return engine


def gaps(times: list[float], start: float, end: float) -> list[float]:
    inside = [t for t in times if start <= t <= end]
    return [b - a for a, b in itertools.pairwise(inside)]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "n": 0}
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 1),
        "max_ms": round(ordered[-1] * 1e3, 1),
        "n": len(ordered),
    }


def stall(
    loaded: LoadedModel, budget: int, long: list[int], shorts: list[list[int]]
) -> dict[str, Any]:
    """One round of the stall scenario on a fresh engine."""
    recorder = Recorder()
    engine = started_engine(loaded, budget, recorder)
    streams = [f"s{n}" for n in range(STREAMS)]
    try:
        for rid, prompt in zip(streams, shorts, strict=False):
            params = SamplingParams(max_tokens=4000, temperature=0.0)
            engine.submit(Generate(request_id=rid, prompt=prompt, params=params))
        recorder.wait(lambda: all(recorder.tokens[r] >= WARM_TOKENS for r in streams))
        opened = time.perf_counter()
        goal = {r: recorder.tokens[r] + BEFORE_TOKENS for r in streams}
        recorder.wait(lambda: all(recorder.tokens[r] >= goal[r] for r in streams))
        arrived = time.perf_counter()
        params = SamplingParams(max_tokens=2, temperature=0.0)
        engine.submit(Generate(request_id="long", prompt=long, params=params))
        recorder.wait(lambda: bool(recorder.times["long"]))
        first = recorder.times["long"][0]
    finally:
        engine.stop()
        engine.join(60)
    before = [g for r in streams for g in gaps(recorder.times[r], opened, arrived)]
    during = [g for r in streams for g in gaps(recorder.times[r], arrived, first)]
    return {"before": before, "during": during, "ttft_s": first - arrived}


def throughput(loaded: LoadedModel, budget: int, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate generated tokens/s of ``prompts`` at once, submission to the last token."""
    recorder = Recorder()
    engine = started_engine(loaded, budget, recorder)
    ids = [f"t{n}" for n in range(len(prompts))]
    try:
        started = time.perf_counter()
        for rid, prompt in zip(ids, prompts, strict=True):
            params = SamplingParams(max_tokens=tokens, temperature=0.0)
            engine.submit(Generate(request_id=rid, prompt=prompt, params=params))
        recorder.wait(lambda: all(r in recorder.ended for r in ids))
        elapsed = time.perf_counter() - started
    finally:
        engine.stop()
        engine.join(60)
    return sum(recorder.tokens[r] for r in ids) / elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = args.model or str(packaged_model() or "")
    loaded, _ = fit_weights(load_model(source), "auto", 64 * 2**30)
    tok = loaded.tokenizer
    text = " ".join(
        f"Paragraph {n}: the committee reviewed the budget line by line." for n in range(400)
    )
    long = list(tok.encode(text))[: args.long]
    shorts = [
        list(tok.encode(f"Stream {n}: tell me a long story about the sea.")) for n in range(32)
    ]
    rng = random.Random(0)
    budgets: list[int] = args.budgets
    stalls: dict[int, list[dict[str, Any]]] = {b: [] for b in budgets}
    rates: dict[int, dict[int, list[float]]] = {b: {n: [] for n in args.levels} for b in budgets}
    throughput(loaded, budgets[0], shorts[:2], 8)  # warm-up: kernels, weights in memory
    for round_ in range(args.rounds):
        order = list(budgets)
        rng.shuffle(order)
        for budget in order:
            stalls[budget].append(stall(loaded, budget, long, shorts))
            for level in args.levels:
                rates[budget][level].append(throughput(loaded, budget, shorts[:level], args.tokens))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    sides = {}
    for budget in budgets:
        rounds = stalls[budget]
        sides[str(budget)] = {
            "gap_before": summary([g for r in rounds for g in r["before"]]),
            "gap_during": summary([g for r in rounds for g in r["during"]]),
            "long_ttft_s": round(statistics.median(r["ttft_s"] for r in rounds), 2),
            "tok_s": {str(n): round(statistics.median(v), 1) for n, v in rates[budget].items()},
        }
    base = sides[str(budgets[0])]
    for side in sides.values():
        side["tok_s_ratio"] = {
            n: round(rate / base["tok_s"][n], 3) for n, rate in side["tok_s"].items()
        }
        side["gap_during_p50_ratio"] = round(
            side["gap_during"]["p50_ms"] / max(base["gap_during"]["p50_ms"], 1e-9), 3
        )
    return {
        "model": Path(source).name,
        "device": str(mx.default_device()),
        "blas": blas_library(),
        "long_prompt_tokens": len(long),
        "streams": STREAMS,
        "rounds": args.rounds,
        "budgets": sides,
    }


def publish(result: dict[str, Any], out: str | None) -> None:
    """Print ``result`` as JSON, and write it to ``out`` if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file or model directory (default: SmolLM2)")
    parser.add_argument(
        "--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 64, 128, 256]
    )
    parser.add_argument("--long", type=int, default=2000, help="tokens of the arriving prompt")
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--tokens", type=int, default=64, help="tokens per throughput request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args(argv)
    publish(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
