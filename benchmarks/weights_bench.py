"""The CPU fast path against the quantized one, on the same model, in one process.

Run with ``python -m benchmarks.weights_bench [--model FILE.gguf|DIR]`` (``make
bench-weights``; default: the packaged SmolLM2). Both layouts are loaded from
the same files and run under the same BLAS (the report names the library
mapped), alternating, so only the weight layout differs. Measures:

* **agreement**: greedy tokens of the float32 path against the quantized path.
  *Free-running*: the tokens each generates on its own, compared position by
  position up to the first difference. *Teacher-forced*: the float32 model
  reads the quantized path's own sequence and its argmax is compared at every
  position, so one early difference does not hide the agreement after it.
* **decode step rate** of mlx-lm's ``BatchGenerator`` at 1, 8 and 32
  sequences: the engine's physical limit, with no server around it.
* **prefill** of a long prompt (560 tokens by default): seconds to the first token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, stream_generate

from actors.model.loader import LoadedModel, load_model
from actors.model.packaged import packaged_model
from actors.model.weights import fit_weights
from benchmarks.generation_bench import blas_library

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a child.",
    "List three prime numbers and explain why they are prime.",
    "Describe how a bicycle works.",
    "Give me three tips for learning a new language.",
)
GIB = 2**30


def chat_ids(loaded: LoadedModel, text: str) -> list[int]:
    messages = [{"role": "user", "content": text}]
    ids: list[int] = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return ids


def greedy(loaded: LoadedModel, prompt: list[int], tokens: int) -> list[int]:
    return [step.token for step in stream_generate(loaded.model, loaded.tokenizer, prompt, tokens)]


def agreement(quantized: LoadedModel, wide: LoadedModel, tokens: int) -> dict[str, Any]:
    """Free-running and teacher-forced greedy agreement over every prompt."""
    free = forced = compared = total = 0
    for text in PROMPTS:
        prompt = chat_ids(quantized, text)
        reference = greedy(quantized, prompt, tokens)
        own = greedy(wide, prompt, tokens)
        same = next(
            (i for i, (a, b) in enumerate(zip(reference, own, strict=False)) if a != b), None
        )
        free += min(len(reference), len(own)) if same is None else same
        total += len(reference)
        logits = wide.model(mx.array([prompt + reference[:-1]]))[0, len(prompt) - 1 :]
        picks = mx.argmax(logits, axis=-1).tolist()
        assert isinstance(picks, list)
        forced += sum(int(a == b) for a, b in zip(picks, reference, strict=True))
        compared += len(reference)
    return {
        "tokens": total,
        "free_running_prefix": free,
        "free_running": free / total,
        "teacher_forced_equal": forced,
        "teacher_forced": forced / compared,
    }


def step_rate(loaded: LoadedModel, batch: int, steps: int) -> float:
    """Decode tokens/s of ``BatchGenerator`` with ``batch`` sequences (prefill excluded)."""
    prompts = [chat_ids(loaded, f"Story {n}: tell me about the sea.") for n in range(batch)]
    generator = BatchGenerator(loaded.model, max_tokens=steps + 8, completion_batch_size=batch)
    generator.insert(prompts, [steps + 8] * batch)
    produced = 0
    while produced < batch:  # until every sequence has its first token
        produced += len(generator.next_generated())  # type: ignore[no-untyped-call]
    start, produced = time.perf_counter(), 0
    for _ in range(steps):
        produced += len(generator.next_generated())  # type: ignore[no-untyped-call]
    elapsed = time.perf_counter() - start
    generator.close()  # type: ignore[no-untyped-call]
    return produced / elapsed


def prefill_seconds(loaded: LoadedModel, length: int) -> float:
    """Seconds from a ``length``-token prompt to its first token."""
    filler = " ".join(f"Rule {n}: answer politely and briefly." for n in range(length))
    prompt = chat_ids(loaded, filler)[-length:]
    start = time.perf_counter()
    next(iter(stream_generate(loaded.model, loaded.tokenizer, prompt, 1)))
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measure, both layouts alternating."""
    source = args.model or str(packaged_model() or "")
    quantized = load_model(source)
    wide, choice = fit_weights(load_model(source), "float32", 64 * GIB)
    layouts = {"quantized": quantized, "float32": wide}
    for loaded in layouts.values():  # warm-up: kernels, pages
        greedy(loaded, chat_ids(loaded, "Hello"), 4)
    rates: dict[str, dict[str, float]] = {name: {} for name in layouts}
    for batch in args.batches:
        for name, loaded in layouts.items():
            samples = [step_rate(loaded, batch, args.steps) for _ in range(args.rounds)]
            rates[name][str(batch)] = statistics.median(samples)
    prefill = {
        name: statistics.median(prefill_seconds(m, args.prefill) for _ in range(args.rounds))
        for name, m in layouts.items()
    }
    return {
        "agreement": agreement(quantized, wide, args.tokens),
        "decode_tok_s": rates,
        "prefill_s": prefill,
        "environment": {
            "model": quantized.name,
            "parameters": quantized.num_parameters,
            "bytes": {"quantized": choice.bytes_before, "float32": choice.bytes_after},
            "device": str(mx.default_device()),
            "blas": blas_library(),
            "prefill_tokens": args.prefill,
        },
    }


def report(result: dict[str, Any]) -> str:
    """A readable summary, with the float32 path as a ratio to the quantized one."""
    env, agree = result["environment"], result["agreement"]
    lines = [f"model {env['model']} on {env['device']}, BLAS: {env['blas']}"]
    lines.append(
        f"agreement over {agree['tokens']} greedy tokens: teacher-forced "
        f"{agree['teacher_forced']:.3f}, free-running prefix {agree['free_running']:.3f}"
    )
    rates = result["decode_tok_s"]
    for batch, quantized in rates["quantized"].items():
        wide = rates["float32"][batch]
        lines.append(
            f"batch {batch:>3}: quantized {quantized:7.1f} tok/s, float32 {wide:7.1f} tok/s "
            f"-> {wide / quantized:.2f}x"
        )
    prefill = result["prefill_s"]
    lines.append(
        f"prefill {env['prefill_tokens']} tokens: quantized {prefill['quantized']:.2f} s, "
        f"float32 {prefill['float32']:.2f} s -> {prefill['quantized'] / prefill['float32']:.1f}x"
    )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weights_bench")
    parser.add_argument("--model", help="GGUF file or model directory (default: SmolLM2)")
    parser.add_argument("--tokens", type=int, default=100, help="greedy tokens per prompt")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=16, help="decode steps per rate sample")
    parser.add_argument("--prefill", type=int, default=560, help="prompt tokens for prefill")
    parser.add_argument("--rounds", type=int, default=3, help="samples per measure (median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the report."""
    args = parse(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
