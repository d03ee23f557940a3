"""Resuming a request on a fresh engine: the prompt plus the tokens already sent.

This is what the generation actor does for a request whose engine process
died after it had streamed tokens (see ``actors.generation.supervised.router``); here it
is checked on the engine alone, one sequence at a time, so that batch numerics
play no part: the continuation must be exactly the uninterrupted run's.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.generation.protocol import Failed, Finished, FinishReason
from tests.generation_harness import Outcome, harness

pytestmark = pytest.mark.timeout(180)

NO_EOS = {token: -100.0 for token in range(7)}
"""Bias against the special tokens: every run reaches ``max_tokens``."""
PROMPTS = [f"Tell me about item {n} and what follows" for n in range(8)]
MAX_TOKENS = 64
CUT = 20
"""About this many tokens were delivered before the engine died."""


def delivered(outcome: Outcome, at_least: int) -> tuple[list[int], str]:
    """The tokens and text of the first chunks that hold ``at_least`` tokens."""
    tokens: list[int] = []
    text = ""
    for chunk in outcome.chunks:
        if len(tokens) >= at_least:
            break
        tokens += chunk.token_ids
        text += chunk.text
    return tokens, text


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 0.8, "seed": 7, "top_p": 0.9},
        {"temperature": 0.0, "repetition_penalty": 1.3},
    ],
    ids=["greedy", "seeded", "penalised"],
)
async def test_a_resumed_request_continues_exactly_where_it_stopped(
    loaded_model: Any, params: dict[str, Any]
) -> None:
    agreed = total = 0
    async with harness(loaded_model) as h:
        for text in PROMPTS:
            prompt = h.prompt(text)
            common = {"max_tokens": MAX_TOKENS, "logit_bias": NO_EOS, **params}
            whole = await h.run(prompt, **common)
            sent, sent_text = delivered(whole, CUT)
            rest = await h.run_resumed(prompt, sent, **common)
            assert isinstance(rest.end, Finished), rest.end
            assert rest.end.reason is FinishReason.LENGTH
            assert rest.end.prompt_tokens == len(prompt)  # the resumed tokens are not prompt
            assert rest.end.completion_tokens == MAX_TOKENS
            assert sent + rest.tokens == whole.tokens
            assert sent_text + rest.text == whole.text
            agreed += sum(a == b for a, b in zip(sent + rest.tokens, whole.tokens, strict=True))
            total += len(whole.tokens)
    assert agreed == total == MAX_TOKENS * len(PROMPTS)


async def test_a_resumed_request_with_no_tokens_left_is_refused(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Short")
        outcome = await h.run_resumed(prompt, [20, 21], max_tokens=2, temperature=0.0)
        assert isinstance(outcome.end, Failed)
        assert "tokens left" in outcome.end.detail
