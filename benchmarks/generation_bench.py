"""Generation through the actor runtime, side by side with raw mlx-lm, as ratios.

Run with ``python -m benchmarks.generation_bench`` (``make bench-generation``).
Everything runs in one process on one model, so both sides use the same MLX
build and the same BLAS; the report names the BLAS library actually mapped.

Measures (greedy decoding, fixed prompts):

* **single stream**: decode tokens/s of one request through the generation
  actor against ``mlx_lm.stream_generate`` on the same prompt, alternating
  rounds. Decode rate is tokens after the first divided by the time between
  the first and the last token, on both sides, so prefill is excluded alike.
* **concurrency**: aggregate generated tokens/s with 1, 8 and 32 concurrent
  requests through the actor, as a ratio to 1.
* **cached prefix**: time to first token of a prompt sharing a 1,000-token
  prefix with an earlier request (served from the kv-cache) against the same
  prompt with the cache cleared (cold), alternating rounds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mlx.core as mx
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler

from actors.generation.client import GenerationClient
from actors.generation.inprocess.actor import ThreadedGeneration
from actors.generation.inprocess.host import ModelHost
from actors.generation.protocol import Generate, SamplingParams, TokenChunk
from actors.kvcache.store import PrefixCache
from actors.model.embedded import default_model_dir
from actors.model.loader import LoadedModel, load_model
from actors.model.weights import WEIGHTS_MODES, fit_weights
from runtime import ActorSystem, ChildSpec, SupervisorSpec


@dataclass
class Rig:
    """A running generation actor with a prefix cache."""

    client: GenerationClient
    cache: PrefixCache
    counter: int = 0

    async def timed(self, prompt: list[int], max_tokens: int) -> tuple[float, list[float]]:
        """Run one greedy request; return (start, arrival time of each token)."""
        self.counter += 1
        request = Generate(
            request_id=f"bench-{self.counter}",
            prompt=prompt,
            params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
        start = time.perf_counter()
        arrivals: list[float] = []
        async with self.client.stream(request) as events:
            async for event in events:
                if isinstance(event, TokenChunk):
                    now = time.perf_counter()
                    arrivals.extend([now] * len(event.token_ids))
        return start, arrivals


@asynccontextmanager
async def rig(loaded: LoadedModel) -> AsyncIterator[Rig]:
    """Start a one-actor system around ``loaded``."""
    host: ModelHost[LoadedModel] = ModelHost(lambda: loaded)
    cache = PrefixCache(max_entries=64, max_bytes=4 * 1024**3)
    spec = SupervisorSpec(
        "root",
        [ChildSpec("generation", lambda: ThreadedGeneration(host, prefix_store=cache))],
    )
    async with ActorSystem(spec) as system:
        yield Rig(GenerationClient(system.ref("generation"), system.open_inbox), cache)


def decode_rate(arrivals: Sequence[float]) -> float:
    """Tokens per second after the first token."""
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return 0.0
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def raw_decode_rate(loaded: LoadedModel, prompt: list[int], max_tokens: int) -> float:
    """The same measure for ``mlx_lm.stream_generate``."""
    arrivals: list[float] = []
    sampler = make_sampler(temp=0.0)
    for _ in stream_generate(
        loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens, sampler=sampler
    ):
        arrivals.append(time.perf_counter())
    return decode_rate(arrivals)


async def single_stream(
    h: Rig, loaded: LoadedModel, prompt: list[int], args: Any
) -> dict[str, float]:
    """Median decode rate of the actor and of raw mlx-lm over alternating rounds."""
    ours: list[float] = []
    raw: list[float] = []
    for round_ in range(args.rounds):
        if round_ % 2:
            raw.append(await anyio.to_thread.run_sync(raw_decode_rate, loaded, prompt, args.tokens))
        _, arrivals = await h.timed(prompt, args.tokens)
        ours.append(decode_rate(arrivals))
        if not round_ % 2:
            raw.append(await anyio.to_thread.run_sync(raw_decode_rate, loaded, prompt, args.tokens))
        h.cache.clear()
    actor, mlx = statistics.median(ours), statistics.median(raw)
    return {"actor_tok_s": actor, "mlx_lm_tok_s": mlx, "ratio": actor / mlx}


async def concurrency(
    h: Rig, prompts: list[list[int]], levels: Sequence[int], tokens: int
) -> dict[str, Any]:
    """Aggregate generated tokens/s at each concurrency level, and its ratio to 1."""
    rates: dict[int, float] = {}
    for level in levels:
        counts: list[int] = []
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(level):
                tg.start_soon(_count_into, h, prompts[n % len(prompts)], tokens, counts)
        rates[level] = sum(counts) / (time.perf_counter() - start)
        h.cache.clear()
    base = rates[levels[0]]
    return {str(k): {"tok_s": v, "ratio_to_1": v / base} for k, v in rates.items()}


async def _count_into(h: Rig, prompt: list[int], tokens: int, counts: list[int]) -> None:
    _, arrivals = await h.timed(prompt, tokens)
    counts.append(len(arrivals))


async def cached_prefix(
    h: Rig, prefix: list[int], suffixes: list[list[int]], rounds: int
) -> dict[str, float]:
    """Time to first token with the shared prefix cached against cold."""
    cold: list[float] = []
    warm: list[float] = []
    for round_ in range(rounds):
        h.cache.clear()
        await h.timed(prefix + suffixes[0], 2)  # leaves the prefix in the cache
        start, arrivals = await h.timed(prefix + suffixes[1 + round_ % 3], 1)
        warm.append(arrivals[0] - start)
        h.cache.clear()
        start, arrivals = await h.timed(prefix + suffixes[1 + round_ % 3], 1)
        cold.append(arrivals[0] - start)
    w, c = statistics.median(warm), statistics.median(cold)
    return {"cached_ttft_ms": w * 1e3, "cold_ttft_ms": c * 1e3, "ratio": w / c}


def blas_library() -> str:
    """Which BLAS MLX's CPU backend resolves to: a preloaded one, or the wheel's own."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "blas" in preload or "mkl" in preload:
        return f"preloaded {preload}"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "platform default"
    bundled = {line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines() if "mlx" in line}
    named = sorted(name for name in bundled if "blas" in name)
    return f"bundled with the mlx wheel ({', '.join(named)})" if named else "platform default"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measure, in one process."""
    model_path = args.model or str(default_model_dir(args.size))
    # The layout troupe serve would choose (float32 on a CPU); both sides share it.
    loaded, _ = fit_weights(load_model(model_path), args.weights, 64 * 2**30)
    tok = loaded.tokenizer
    prompt = list(tok.encode("The quick brown fox jumps over the lazy dog. Tell me a story."))
    prompts = [
        list(tok.encode(f"Request {n}: write about the sea and the sky.")) for n in range(32)
    ]
    filler = list(
        tok.encode(" ".join(f"line {n} of the shared system prompt." for n in range(400)))
    )
    prefix = filler[: args.prefix]
    suffixes = [list(tok.encode(f" Question {n}: what now?")) for n in range(4)]
    async with rig(loaded) as h:
        await h.timed(prompt, 8)  # warm-up: compile kernels, touch weights
        result = {
            "single_stream": await single_stream(h, loaded, prompt, args),
            "concurrency": await concurrency(h, prompts, args.levels, args.tokens),
            "cached_prefix": await cached_prefix(h, prefix, suffixes, args.rounds),
        }
    result["environment"] = {
        "model": loaded.name,
        "parameters": loaded.num_parameters,
        "prefix_tokens": len(prefix),
        "mlx": importlib.metadata.version("mlx"),
        "device": str(mx.default_device()),
        "blas": blas_library(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    return result


def report(result: dict[str, Any]) -> str:
    """A readable table of ``result``."""
    env, single = result["environment"], result["single_stream"]
    lines = [
        f"model {env['model']} ({env['parameters']:,} parameters), mlx {env['mlx']} on "
        f"{env['device']}, BLAS: {env['blas']}",
        "",
        f"single stream decode: actor {single['actor_tok_s']:.1f} tok/s, mlx_lm.stream_generate "
        f"{single['mlx_lm_tok_s']:.1f} tok/s -> {single['ratio']:.3f}x (target >= 0.95x)",
    ]
    for level, row in result["concurrency"].items():
        lines.append(
            f"{level:>3} concurrent: {row['tok_s']:8.1f} tok/s aggregate -> "
            f"{row['ratio_to_1']:.2f}x of 1"
        )
    cached = result["cached_prefix"]
    lines.append(
        f"TTFT with a {env['prefix_tokens']}-token prefix: "
        f"cached {cached['cached_ttft_ms']:.1f} ms, cold {cached['cold_ttft_ms']:.1f} ms "
        f"-> {cached['ratio']:.3f}x (target <= 0.25x)"
    )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation_bench")
    parser.add_argument("--model", help="model directory, GGUF file or hub id (default: embedded)")
    parser.add_argument("--size", default="tiny", help="embedded model size (default: tiny)")
    parser.add_argument("--weights", choices=WEIGHTS_MODES, default="auto", help="weight layout")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measure")
    parser.add_argument("--prefix", type=int, default=1000, help="shared prefix length")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the report."""
    args = parse(argv)
    result = anyio.run(run, args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
