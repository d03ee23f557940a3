"""Log-probabilities from the engine, checked against a direct forward pass of the model."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import pytest

from actors.generation.protocol import LOGPROB_FLOOR, TokenLogprob
from tests.generation_harness import GREEDY, harness

pytestmark = pytest.mark.timeout(120)


def direct_logprobs(model: Any, prompt: list[int], generated: list[int]) -> Any:
    """Log-softmax at every generated position, from one forward pass over the whole text."""
    tokens = mx.array([prompt + generated[:-1]])
    logits = model(tokens)[0, len(prompt) - 1 :, :].astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def chunk_logprobs(outcome: Any) -> list[TokenLogprob]:
    found: list[TokenLogprob] = []
    for chunk in outcome.chunks:
        assert chunk.logprobs is not None and len(chunk.logprobs) == len(chunk.token_ids)
        found.extend(chunk.logprobs)
    return found


async def test_logprobs_of_returned_tokens_match_a_direct_forward_pass(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("The river runs")
        for params in (GREEDY, {"temperature": 1.0, "seed": 3}):
            outcome = await h.run(prompt, max_tokens=12, logprobs=5, **params)
            reported = chunk_logprobs(outcome)
            assert [entry.token for entry in reported] == outcome.tokens
            expected = direct_logprobs(loaded_model.model, prompt, outcome.tokens)
            for position, entry in enumerate(reported):
                row = expected[position]
                assert entry.logprob == pytest.approx(row[entry.token].item(), abs=2e-3)
                assert len(entry.top_tokens) == 5
                assert entry.top_logprobs == sorted(entry.top_logprobs, reverse=True)
                best: Any = mx.argsort(-row)[:5].tolist()
                assert entry.top_tokens[0] == best[0]
                for token, value in zip(entry.top_tokens, entry.top_logprobs, strict=True):
                    assert value == pytest.approx(row[token].item(), abs=2e-3)
            if params is GREEDY:
                assert all(e.token == e.top_tokens[0] for e in reported)


async def test_requests_without_logprobs_carry_none(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        outcome = await h.run(h.prompt("Hello"), max_tokens=4, **GREEDY)
        assert all(chunk.logprobs is None for chunk in outcome.chunks)
        zero = await h.run(h.prompt("Hello"), max_tokens=4, logprobs=0, **GREEDY)
        entries = chunk_logprobs(zero)
        assert len(entries) == 4 and all(not e.top_tokens for e in entries)


async def test_a_grammar_masked_alternative_is_floored_not_infinite(loaded_model: Any) -> None:
    from actors.generation.engine.constraints import json_schema_grammar  # noqa: PLC0415

    grammar = json_schema_grammar({"enum": ["yes", "no"]})
    async with harness(loaded_model) as h:
        outcome = await h.run(h.prompt("Answer:"), grammar=grammar, logprobs=20, max_tokens=8)
        entries = chunk_logprobs(outcome)
        assert entries and any(LOGPROB_FLOOR in e.top_logprobs for e in entries)
        assert all(e.logprob > LOGPROB_FLOOR for e in entries)
