"""What grammar-constrained rows cost the continuous batch, side by side, as ratios.

Run with ``python -m benchmarks.constrained_bench`` (``make bench-constrained``).
One engine (the same code ``troupe serve`` runs, on its own thread here), one
model, one BLAS. Rounds alternate between two loads of the same 16 streams:

* **free**: no stream constrained;
* **half**: every other stream constrained by a JSON Schema
  (``response_format: json_schema``), the rest free.

Every stream generates exactly ``--tokens`` tokens (the schema's array is longer
than that), so both loads decode the same number of tokens in batches of the
same size. Reported: aggregate tokens/s of each load and the ratio half / free;
the time one constrained token's mask takes on the engine thread (llguidance's
mask, the bit unpacking, building the masked logits), measured alone; and the
one-off compile time of the schema.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import mlx.core as mx

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.constraints import json_schema_grammar
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.engine.grammar_mask import GrammarBook, TokenMask
from actors.generation.engine.requests import vocab_size
from actors.generation.protocol import Finished, Generate, SamplingParams, StreamEvent
from actors.model.embedded import default_model_dir
from actors.model.loader import LoadedModel, load_model
from benchmarks.harness.environment import versions

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "readings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "station": {"type": "string", "maxLength": 8},
                    "celsius": {"type": "number", "minimum": -60, "maximum": 60},
                    "ok": {"type": "boolean"},
                },
                "required": ["station", "celsius", "ok"],
                "additionalProperties": False,
            },
            "minItems": 1000,
        }
    },
    "required": ["readings"],
    "additionalProperties": False,
}
"""An agent-style schema whose documents are longer than any stream here."""


class Load:
    """One round: ``streams`` requests submitted together, timed until the last ends."""

    def __init__(self, engine_factory: Any, prompts: list[list[int]]) -> None:
        self._factory = engine_factory
        self._prompts = prompts

    def run(self, grammar: str | None, tokens: int, constrained_every: int) -> tuple[float, int]:
        """(seconds, tokens generated) for one round."""
        done = threading.Event()
        ended: list[Finished] = []
        generated = [0]

        def emit(events: list[StreamEvent]) -> None:
            for event in events:
                if isinstance(event, Finished):
                    ended.append(event)
                    generated[0] += event.completion_tokens
            if len(ended) == len(self._prompts):
                done.set()

        engine: Engine = self._factory(emit)
        engine.start()
        start = time.perf_counter()
        for n, prompt in enumerate(self._prompts):
            constrained = grammar is not None and n % constrained_every == 0
            params = SamplingParams(
                max_tokens=tokens, temperature=0.8, seed=n, grammar=grammar if constrained else None
            )
            engine.submit(Generate(request_id=f"b{n}", prompt=prompt, params=params))
        if not done.wait(600):
            raise RuntimeError("a round did not finish in 10 minutes")
        seconds = time.perf_counter() - start
        engine.stop()
        engine.join(30)
        return seconds, generated[0]


def mask_cost(loaded: LoadedModel, grammar: str, tokens: int) -> dict[str, float]:
    """Median milliseconds of one constrained token's mask, and the schema's compile time."""
    vocab = vocab_size(loaded)
    book = GrammarBook(loaded, vocab)
    start = time.perf_counter()
    book.matcher(grammar)  # tokenizer and grammar, compiled once
    compile_ms = (time.perf_counter() - start) * 1e3
    mask = TokenMask(book.matcher(grammar), vocab, sorted(loaded.eos_token_ids))
    logits = mx.zeros((1, vocab))
    context = mx.array([0])
    times: list[float] = []
    for step in range(tokens):
        started = time.perf_counter()
        masked = mask(context, logits)
        mx.eval(masked)
        times.append(time.perf_counter() - started)
        # The first allowed token; deterministic, and as long as the document allows.
        context = mx.argmax(masked, axis=-1)
        if step == 0:
            times.clear()  # the first call builds no state worth timing apart
    return {
        "mask_ms_p50": statistics.median(times) * 1e3,
        "mask_ms_p95": sorted(times)[int(len(times) * 0.95)] * 1e3,
        "compile_ms_first": compile_ms,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="model directory (default: an embedded one)")
    parser.add_argument("--size", default="tiny", help="embedded model size without --model")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=96, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each load, alternated")
    parser.add_argument("--json", dest="json_path", default=None, help="also write results here")
    args = parser.parse_args(argv)
    loaded = load_model(args.model or str(default_model_dir(args.size)))
    grammar = json_schema_grammar(SCHEMA)
    lock = threading.Lock()
    config = EngineConfig(completion_batch_size=max(32, args.streams))

    def factory(emit: Any) -> Engine:
        return Engine(loaded, emit, lambda reason: None, config=config, exclusive=lock)

    prompts = [
        list(loaded.tokenizer.encode(f"Reading {n}: the station reports"))
        for n in range(args.streams)
    ]
    load = Load(factory, prompts)
    load.run(grammar, 8, 2)  # warm-up: compiles, allocates, fills the grammar cache
    rates: dict[str, list[float]] = {"free": [], "half": []}
    for _ in range(args.rounds):
        for name, every in (("free", 0), ("half", 2)):
            seconds, generated = load.run(grammar if every else None, args.tokens, every or 1)
            rates[name].append(generated / seconds)
    free, half = statistics.median(rates["free"]), statistics.median(rates["half"])
    result = {
        "model": loaded.name,
        "streams": args.streams,
        "tokens_per_stream": args.tokens,
        "rounds": args.rounds,
        "tok_s_free": round(free, 1),
        "tok_s_half_constrained": round(half, 1),
        "ratio_half_over_free": round(half / free, 3),
        **{k: round(v, 3) for k, v in mask_cost(loaded, grammar, 200).items()},
        "vocab": vocab_size(loaded),
        "versions": versions(),
    }
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
