"""Prefix-cache memory with shared blocks against one private copy per entry, side by side.

Run with ``python -m benchmarks.prefix_dedup_bench`` (``make bench-dedup``;
default model: the packaged SmolLM2, float32 as ``troupe serve`` lays it out
on a CPU). Each side is the engine itself (:class:`Engine` on its thread, no
HTTP) with a fresh :class:`PrefixCache` under the default byte budget (2 GiB),
one model shared by all sides:

1. one conversation opens with a ``--system``-token system prompt (its
   prefill fills the cache);
2. 31 more conversations follow, ``--wave`` at a time, each with the same
   system prompt and a user turn of its own, ``--tokens`` tokens each.

Then, per side: the bytes the cache holds (``nbytes``, each shared block once),
what its entries would hold unshared (``logical``), entries kept and evicted,
MLX's active memory over the model's, and the time spent inside the store's
``insert`` and ``lookup`` (the cost of cutting and joining blocks). The side
``none`` cuts nothing (every entry one private copy, as the store kept them
before blocks); the others share blocks of ``--blocks`` positions.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlx.core as mx

from actors.generation.engine.batch_engine import Engine
from actors.generation.protocol import Generate, SamplingParams
from actors.kvcache.store import PrefixCache, PrefixHit
from actors.model.loader import LoadedModel, load_model
from actors.model.packaged import packaged_model
from actors.model.weights import fit_weights
from benchmarks.generation_bench import blas_library
from benchmarks.token_budget_bench import Recorder, publish, summary

T = TypeVar("T")

CONVERSATIONS = 32
NO_SHARING = 1 << 30
"""A block longer than any sequence: every entry is one private copy."""


class TimedStore(PrefixCache):
    """The store, with the wall time of each insert and lookup recorded."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.insert_s: list[float] = []
        self.lookup_s: list[float] = []

    def insert(self, tokens: Sequence[int], cache: Sequence[Any], namespace: str = "") -> bool:
        insert = super().insert
        return _timed(self.insert_s, lambda: insert(tokens, cache, namespace))

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> PrefixHit | None:
        lookup = super().lookup
        return _timed(self.lookup_s, lambda: lookup(tokens, namespace))


def _timed(into: list[float], action: Callable[[], T]) -> T:
    started = time.perf_counter()
    try:
        return action()
    finally:
        into.append(time.perf_counter() - started)


def prompts(loaded: LoadedModel, system_tokens: int) -> tuple[list[int], list[list[int]]]:
    tok = loaded.tokenizer
    text = " ".join(
        f"Rule {n}: answer politely, cite the policy section, and never reveal account data."
        for n in range(300)
    )
    system = list(tok.encode(text))[:system_tokens]
    turns = [
        list(tok.encode(f" Customer {n} asks: where is my order number {1000 + n}?"))
        for n in range(CONVERSATIONS)
    ]
    return system, [system + turn for turn in turns]


def side(
    loaded: LoadedModel, block_tokens: int, conversations: list[list[int]], args: argparse.Namespace
) -> dict[str, Any]:
    gc.collect()
    mx.clear_cache()
    baseline = mx.get_active_memory()
    store = TimedStore(max_entries=2 * CONVERSATIONS, block_tokens=block_tokens)
    recorder = Recorder()
    engine = Engine(loaded, recorder.emit, print, prefix_store=store)
    engine.start()
    try:
        waves = [conversations[:1]] + [
            conversations[n : n + args.wave] for n in range(1, len(conversations), args.wave)
        ]
        submitted = 0
        followers = 0.0
        for wave in waves:
            started = time.perf_counter()
            ids = [f"c{submitted + n}" for n in range(len(wave))]
            for rid, prompt in zip(ids, wave, strict=True):
                params = SamplingParams(max_tokens=args.tokens, temperature=0.0)
                engine.submit(Generate(request_id=rid, prompt=prompt, params=params))
            submitted += len(wave)
            recorder.wait(lambda ids=ids: all(r in recorder.ended for r in ids))
            if submitted > 1:
                followers += time.perf_counter() - started
    finally:
        engine.stop()
        engine.join(60)
    del engine
    gc.collect()
    mx.clear_cache()
    stats = store.statistics()
    return {
        "block_tokens": "none" if block_tokens == NO_SHARING else block_tokens,
        "entries": stats.entries,
        "evictions": stats.evictions,
        "nbytes_mb": round(stats.nbytes / 1e6, 1),
        "logical_mb": round(stats.logical_nbytes / 1e6, 1),
        "mlx_active_over_model_mb": round((mx.get_active_memory() - baseline) / 1e6, 1),
        "blocks": stats.blocks,
        "hit_tokens": stats.hit_tokens,
        "insert": _ms(store.insert_s),
        "lookup": _ms(store.lookup_s),
        "followers_s": round(followers, 2),
    }


def _ms(seconds: list[float]) -> dict[str, float]:
    figures = summary(seconds)
    figures["total_ms"] = round(sum(seconds) * 1e3, 1)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = args.model or str(packaged_model() or "")
    loaded, _ = fit_weights(load_model(source), "auto", 64 * 2**30)
    system, conversations = prompts(loaded, args.system)
    sides = []
    for block_tokens in [NO_SHARING, *args.blocks]:
        sides.append(side(loaded, block_tokens, conversations, args))
        print(f"side {sides[-1]['block_tokens']} done", file=sys.stderr)
    base = sides[0]
    for result in sides:
        result["nbytes_ratio"] = round(result["nbytes_mb"] / max(base["nbytes_mb"], 1e-9), 3)
    return {
        "model": Path(source).name,
        "device": str(mx.default_device()),
        "blas": blas_library(),
        "system_prompt_tokens": len(system),
        "conversation_tokens": [len(c) for c in conversations[:2]],
        "generated_tokens": args.tokens,
        "conversations": CONVERSATIONS,
        "max_bytes_mb": round(base_budget() / 1e6),
        "sides": sides,
    }


def base_budget() -> int:
    return PrefixCache().max_bytes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file or model directory (default: SmolLM2)")
    parser.add_argument(
        "--blocks", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 256]
    )
    parser.add_argument("--system", type=int, default=2000, help="system prompt tokens")
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per turn")
    parser.add_argument("--wave", type=int, default=8, help="conversations sent at once")
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args(argv)
    publish(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
