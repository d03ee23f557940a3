"""The n choices of one request share one prefill of their prompt, in the engine."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors.generation.protocol import Finished, Generate, SamplingParams
from tests.generation_harness import Harness, Outcome, harness, record

pytestmark = pytest.mark.timeout(120)


async def run_group(h: Harness, prompt: list[int], seeds: list[int], group: str) -> list[Outcome]:
    outcomes = [Outcome() for _ in seeds]

    async def one(index: int) -> None:
        params = SamplingParams(max_tokens=10, temperature=1.0, seed=seeds[index])
        request = Generate(
            request_id=f"{group}.{index}", prompt=prompt, params=params, prefill_group=group
        )
        async with h.client.stream(request) as events:
            async for event in events:
                record(outcomes[index], event)

    async with anyio.create_task_group() as tg:
        for index in range(len(seeds)):
            tg.start_soon(one, index)
    return outcomes


async def test_choices_share_the_prompts_prefill_and_match_lone_runs(loaded_model: Any) -> None:
    # A prompt longer than one prefill chunk (16 tokens here): shared over several steps.
    async with harness(loaded_model, prefill_step_size=16) as h:
        prompt = h.prompt("A long story about a river, a mountain and a town. " * 6)
        assert len(prompt) > 40
        lone = [await h.run(prompt, max_tokens=10, temperature=1.0, seed=s) for s in (1, 2, 3)]
        shared = await run_group(h, prompt, [1, 2, 3], "g1")
        assert [o.tokens for o in shared] == [o.tokens for o in lone]
        for outcome in shared:
            assert isinstance(outcome.end, Finished)
            assert outcome.end.prompt_tokens == len(prompt)
            assert outcome.end.cached_tokens == len(prompt) - 1  # only the last token prefilled
        assert len({tuple(o.tokens) for o in shared}) == 3, "each choice samples on its own"


async def test_a_group_of_one_and_a_one_token_prompt_run_as_usual(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        [single] = await run_group(h, h.prompt("Hi"), [5], "g2")
        assert isinstance(single.end, Finished) and len(single.tokens) == 10
        short = await run_group(h, h.prompt("a")[:1], [1, 2], "g3")
        assert all(isinstance(o.end, Finished) and len(o.tokens) == 10 for o in short)
