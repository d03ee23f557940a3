"""Sampling on the real generated model: EOS, filters, penalties, bias, validation.

The tiny model has random weights, so its greedy output is a loop of one
token and its EOS logit is close to the others: small biases and penalties
change what it says, which is what lets these tests tell the controls apart.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.generation.protocol import Failed, FailureKind, Finished, FinishReason
from tests.generation_harness import GREEDY, harness

pytestmark = pytest.mark.timeout(120)


async def test_eos_ends_the_request_with_stop_and_is_counted_but_never_emitted(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("The weather today is")
        free = await h.run(prompt, max_tokens=40, logit_bias={h.eos: -100.0}, **GREEDY)
        # A small push makes EOS the greedy pick a few tokens in; the other
        # tokens keep their order, so the text before it is the free text's.
        ended = await h.run(prompt, max_tokens=40, logit_bias={h.eos: 1.0}, **GREEDY)
        assert isinstance(ended.end, Finished)
        assert ended.end.reason is FinishReason.STOP
        assert 0 < len(ended.tokens) < 40, "EOS should come after some text"
        assert ended.end.completion_tokens == len(ended.tokens) + 1  # EOS counted
        assert ended.tokens == free.tokens[: len(ended.tokens)]
        assert h.eos not in ended.tokens
        assert ended.text == h.tokenizer.decode(ended.tokens, skip_special_tokens=True)
        assert h.tokenizer.eos_token not in ended.text


async def test_eos_as_the_first_token_gives_an_empty_completion(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        outcome = await h.run(
            h.prompt("Bananas and"), max_tokens=16, logit_bias={h.eos: 100.0}, **GREEDY
        )
        assert isinstance(outcome.end, Finished)
        assert (outcome.end.reason, outcome.end.completion_tokens) == (FinishReason.STOP, 1)
        assert (outcome.text, outcome.chunks) == ("", [])


@pytest.mark.parametrize("narrow", [{"top_p": 1e-6}, {"min_p": 1.0}], ids=["top_p", "min_p"])
async def test_a_filter_that_keeps_only_the_top_token_is_greedy(
    loaded_model: Any, narrow: dict[str, float]
) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Bananas and")
        greedy = await h.run(prompt, max_tokens=24, **GREEDY)
        sampled = await h.run(prompt, max_tokens=24, temperature=1.0, seed=5)
        assert sampled.tokens != greedy.tokens  # the seed alone would not give greedy
        filtered = await h.run(prompt, max_tokens=24, temperature=1.0, seed=5, **narrow)
        assert filtered.tokens == greedy.tokens


async def test_presence_and_frequency_penalties_steer_greedy_away_from_repeats(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Bananas and")
        greedy = await h.run(prompt, max_tokens=24, **GREEDY)
        assert greedy.tokens[1] == greedy.tokens[0]  # the random model loops
        presence = await h.run(prompt, max_tokens=24, presence_penalty=0.5, **GREEDY)
        frequency = await h.run(prompt, max_tokens=24, frequency_penalty=0.5, **GREEDY)
        for penalised in (presence, frequency):
            assert isinstance(penalised.end, Finished)
            assert penalised.tokens[0] == greedy.tokens[0]  # nothing to penalise yet
            assert penalised.tokens[1] != greedy.tokens[0]
        # Frequency grows with each repeat, presence does not: they part ways.
        assert presence.tokens != frequency.tokens
        again = await h.run(prompt, max_tokens=24, presence_penalty=0.5, **GREEDY)
        assert again.tokens == presence.tokens


async def test_invalid_sampling_parameters_are_rejected_with_every_problem(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model) as h:
        outcome = await h.run([1, 2, 3], max_tokens=0, top_p=0.0, logit_bias={10**9: 1.0})
        assert isinstance(outcome.end, Failed)
        assert outcome.end.kind is FailureKind.INVALID_REQUEST
        for fragment in ("max_tokens", "top_p", "logit_bias"):
            assert fragment in outcome.end.detail


async def test_sampling_controls_change_the_output(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Bananas and")
        greedy = await h.run(prompt, max_tokens=12, **GREEDY)
        favoured = greedy.tokens[0] + 1
        biased = await h.run(prompt, max_tokens=12, logit_bias={favoured: 100.0}, **GREEDY)
        assert biased.tokens[0] == favoured
        top1 = await h.run(prompt, max_tokens=12, temperature=1.5, top_k=1, seed=3)
        assert top1.tokens == greedy.tokens  # top_k=1 is greedy whatever the temperature
        penalised = await h.run(
            prompt, max_tokens=12, repetition_penalty=1.8, frequency_penalty=1.5, **GREEDY
        )
        assert isinstance(penalised.end, Finished)
        assert len(set(penalised.tokens)) >= len(set(greedy.tokens))
