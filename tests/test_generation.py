"""The generation actor on the real generated model: batching, sampling, stops, faults."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import pytest

from actors.generation.protocol import (
    EngineFault,
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    Generate,
    InjectEngineFault,
    SamplingParams,
    TokenChunk,
)
from actors.kvcache.store import PrefixCache
from runtime.lifecycle import Restarted
from tests.generation_harness import GREEDY, Outcome, harness, record
from tests.support import worker

pytestmark = pytest.mark.timeout(120)

LEAVER_TOKENS = 1000
"""The cancelled request's max_tokens: the tiny model's window (2048) holds it."""


async def test_same_seed_gives_the_same_tokens_alone_and_batched(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("The weather today is")
        params = {"temperature": 0.9, "seed": 1234, "max_tokens": 24}
        alone = await h.run(prompt, **params)
        together: list[Outcome] = []

        async def one() -> None:
            together.append(await h.run(prompt, **params))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert len(alone.tokens) == 24
        assert all(o.tokens == alone.tokens for o in together)
        other = await h.run(prompt, temperature=0.9, seed=99, max_tokens=24)
        assert other.tokens != alone.tokens


async def test_eight_concurrent_requests_each_get_exactly_their_own_tokens(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model) as h:
        prompts = [h.prompt(f"Story number {n}: once upon a time") for n in range(8)]
        alone = [await h.run(p, max_tokens=16, **GREEDY) for p in prompts]
        batched: dict[int, Outcome] = {}
        steps_before = (await h.stats()).steps

        async def one(n: int) -> None:
            batched[n] = await h.run(prompts[n], max_tokens=16, **GREEDY)

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(one, n)
        for n in range(8):
            assert batched[n].tokens == alone[n].tokens, f"request {n} got other tokens"
            end = batched[n].end
            assert isinstance(end, Finished)
            assert (end.reason, end.prompt_tokens, end.completion_tokens) == (
                FinishReason.LENGTH,
                len(prompts[n]),
                16,
            )
        # Really batched: far fewer engine steps than tokens made.
        assert (await h.stats()).steps - steps_before < 8 * 16 // 2


async def test_stop_string_across_a_token_boundary_is_never_emitted(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("A list of things:")
        free = await h.run(prompt, max_tokens=40, **GREEDY)
        stop = boundary_spanning_stop(free.chunks)
        stopped = await h.run(prompt, max_tokens=40, stop=[stop], **GREEDY)
        assert stopped.text == free.text[: free.text.index(stop)]
        assert stop not in stopped.text
        assert isinstance(stopped.end, Finished)
        assert stopped.end.reason is FinishReason.STOP


def boundary_spanning_stop(chunks: list[TokenChunk]) -> str:
    """Two characters before and after a chunk boundary, first occurrence in the text."""
    text = ""
    for left, right in itertools.pairwise(chunks):
        text += left.text
        candidate = left.text[-2:] + right.text[:2]
        if len(left.text) >= 2 and len(right.text) >= 2 and text.find(candidate) == -1:
            return candidate
    pytest.fail("the greedy output had no two chunks of two or more characters")


async def test_cancelling_one_request_leaves_the_others_untouched(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompts = [h.prompt(text) for text in ("First prompt", "Second prompt", "Third one")]
        reference = [await h.run(p, max_tokens=20, **GREEDY) for p in prompts]
        results: dict[int, Outcome] = {}
        before = (await h.stats()).generated_tokens

        async def full(n: int) -> None:
            results[n] = await h.run(prompts[n], max_tokens=20, **GREEDY)

        async def leaves_early() -> None:
            # Far longer than the others, and EOS is ruled out: only the
            # cancellation can end it before the others are long done.
            request = Generate(
                request_id="leaver",
                prompt=prompts[1],
                params=SamplingParams(
                    max_tokens=LEAVER_TOKENS, temperature=0.0, logit_bias={h.eos: -100.0}
                ),
            )
            async with h.client.stream(request) as events:
                async for event in events:
                    assert isinstance(event, TokenChunk)
                    break  # the reader goes away after its first chunk

        async with anyio.create_task_group() as tg:
            tg.start_soon(full, 0)
            tg.start_soon(leaves_early)
            tg.start_soon(full, 2)
        assert results[0].tokens == reference[0].tokens
        assert results[2].tokens == reference[2].tokens
        # The engine applies commands in order: once a request sent after the
        # leaver's cancellation has finished, the cancellation was applied.
        probe = await h.run(prompts[0], max_tokens=1, **GREEDY)
        assert isinstance(probe.end, Finished)
        stats = await h.stats()
        assert (stats.running, stats.waiting) == (0, 0)
        leaver_tokens = stats.generated_tokens - before - 2 * 20 - 1
        assert 1 <= leaver_tokens < LEAVER_TOKENS // 2, leaver_tokens


async def test_engine_crash_fails_in_flight_requests_and_restarts_without_reloading(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Tell me about rivers")
        events = h.system.subscribe()
        await h.system.ref("generation").tell(
            InjectEngineFault(kind=EngineFault.CRASH, after_tokens=5)
        )
        outcomes: list[Outcome] = []

        async def one() -> None:
            outcomes.append(await h.run(prompt, max_tokens=30, **GREEDY))

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(one)
        for outcome in outcomes:
            assert isinstance(outcome.end, Failed)
            assert (outcome.end.kind, outcome.end.retryable) == (FailureKind.ENGINE_CRASHED, True)
        with anyio.fail_after(30):
            async for event in events:
                if isinstance(event, Restarted) and event.path == "root/generation":
                    break
        await events.aclose()
        assert worker(h.system, "generation").restarts_total == 1
        after = await h.run(prompt, max_tokens=8, **GREEDY)
        assert isinstance(after.end, Finished)
        assert len(after.tokens) == 8
        assert h.host.loads == 1


async def test_allocation_failure_fails_only_the_requests_in_flight(loaded_model: Any) -> None:
    cache = PrefixCache(max_entries=8, max_bytes=256 * 1024**2)
    async with harness(loaded_model, prefix_store=cache, completion_batch_size=1) as h:
        queued_prompt = h.prompt("Count the apples")
        warm = await h.run(queued_prompt, max_tokens=8, **GREEDY)
        assert cache.statistics().entries == 1  # a later lookup of this prompt would hit
        in_flight = Generate(
            request_id="in-flight",
            prompt=h.prompt("Name the rivers"),
            params=SamplingParams(max_tokens=200, temperature=0.0, logit_bias={h.eos: -100.0}),
        )
        queued = Generate(
            request_id="queued",
            prompt=queued_prompt,
            params=SamplingParams(max_tokens=8, temperature=0.0),
        )
        failed, finished = Outcome(), Outcome()
        async with h.client.stream(in_flight) as first, h.client.stream(queued) as second:
            # Both are submitted; one decode slot holds "in-flight", so "queued"
            # waits. The fault is armed after both submissions and fires two
            # tokens later, a step after the engine has taken "queued" in.
            await h.system.ref("generation").tell(
                InjectEngineFault(kind=EngineFault.OOM, after_tokens=2)
            )
            async for event in first:
                record(failed, event)
            async for event in second:
                record(finished, event)
        assert isinstance(failed.end, Failed)
        assert (failed.end.kind, failed.end.retryable) == (FailureKind.OUT_OF_MEMORY, True)
        assert isinstance(finished.end, Finished), "the queued request was not in flight"
        assert finished.tokens == warm.tokens
        # The prefix cache was cleared before "queued" looked its prompt up.
        assert finished.end.cached_tokens == 0
        stats = cache.statistics()
        assert (stats.hits, stats.inserts, stats.entries) == (0, 2, 1)
        assert worker(h.system, "generation").restarts_total == 0


async def test_prompt_longer_than_the_context_window_is_a_clear_error(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        window = loaded_model.context_length
        outcome = await h.run([5] * window, max_tokens=4)
        assert isinstance(outcome.end, Failed)
        assert outcome.end.kind is FailureKind.PROMPT_TOO_LONG
        assert str(window) in outcome.end.detail
        near = await h.run([5] * (window - 3), max_tokens=50, **GREEDY)
        assert isinstance(near.end, Finished)
        assert (near.end.reason, near.end.completion_tokens) == (FinishReason.LENGTH, 3)


async def test_shared_prefix_is_reused_and_gives_the_same_tokens(loaded_model: Any) -> None:
    cache = PrefixCache(max_entries=8, max_bytes=256 * 1024**2)
    async with harness(loaded_model, prefix_store=cache) as h:
        system_prompt = h.prompt("You are a helpful assistant who answers briefly. " * 8)
        first = system_prompt + h.prompt(" What is rain?")
        second = system_prompt + h.prompt(" What is snow?")
        cold = await h.run(second, max_tokens=12, **GREEDY)
        cache.clear()
        await h.run(first, max_tokens=12, **GREEDY)
        warm = await h.run(second, max_tokens=12, **GREEDY)
        assert isinstance(warm.end, Finished)
        assert warm.end.cached_tokens >= len(system_prompt) - 1
        assert warm.tokens == cold.tokens
        stats = cache.statistics()
        assert stats.hits >= 1
        assert (await h.stats()).cached_tokens == warm.end.cached_tokens


async def test_queued_requests_past_their_deadline_are_dropped_before_prefill(
    loaded_model: Any,
) -> None:
    async with harness(loaded_model, completion_batch_size=1) as h:
        prompt = h.prompt("One at a time")
        outcomes: dict[str, Outcome] = {}

        async def one(name: str, deadline: float | None) -> None:
            request = Generate(
                request_id=name,
                prompt=prompt,
                params=SamplingParams(max_tokens=8, temperature=0.0),
                deadline=deadline,
            )
            outcome = Outcome()
            async with h.client.stream(request) as events:
                async for event in events:
                    record(outcome, event)
            outcomes[name] = outcome

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "running", None)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(one, "expired", time.time() - 1.0)  # queued behind "running"
        running, expired = outcomes["running"].end, outcomes["expired"].end
        assert isinstance(running, Finished)
        assert isinstance(expired, Failed)
        assert expired.kind is FailureKind.DEADLINE_EXCEEDED
        assert outcomes["expired"].tokens == []


async def test_a_deadline_passing_while_queued_drops_the_request_before_prefill(
    loaded_model: Any,
) -> None:
    cache = PrefixCache(max_entries=8, max_bytes=64 * 1024**2)
    async with harness(loaded_model, prefix_store=cache, completion_batch_size=1) as h:
        # Every special token ruled out: never EOS, and every token is text, so
        # the holder streams a chunk per step until it is cancelled.
        never_special = {int(token): -100.0 for token in h.tokenizer.all_special_ids}
        holder = Generate(
            request_id="holder",
            prompt=h.prompt("Hold the only slot"),
            params=SamplingParams(max_tokens=1900, temperature=0.0, logit_bias=never_special),
        )
        queued_outcome = Outcome()

        async def queue_behind_the_holder(deadline: float) -> None:
            request = Generate(
                request_id="queued",
                prompt=h.prompt("Wait for a slot"),
                params=SamplingParams(max_tokens=8, temperature=0.0),
                deadline=deadline,
            )
            async with h.client.stream(request) as events:
                async for event in events:
                    record(queued_outcome, event)

        async with anyio.create_task_group() as tg, h.client.stream(holder) as held:
            assert isinstance(await anext(held), TokenChunk)  # decoding: the slot is taken
            before, queries_before = await h.stats(), cache.statistics().queries
            # Ahead of now, so it is still to come when the engine queues the
            # request; the engine compares it with the same wall clock.
            deadline = time.time() + 0.5
            tg.start_soon(queue_behind_the_holder, deadline)
            queued_in_time = False
            # The holder's tokens pace the engine's steps, between which it
            # takes commands in: each one is a point to look at its queue.
            async for event in held:
                assert isinstance(event, TokenChunk), "the holder ended before the deadline"
                if time.time() >= deadline:
                    break
                if not queued_in_time:
                    queued_in_time = (await h.stats()).waiting == 1 and time.time() < deadline
            assert queued_in_time, "the request never waited in the queue before its deadline"
            # Leaving the block cancelled the holder: the slot is free, the deadline past.
        end = queued_outcome.end
        assert isinstance(end, Failed), end
        assert end.kind is FailureKind.DEADLINE_EXCEEDED
        assert (queued_outcome.tokens, end.tokens_sent) == ([], 0)
        after = await h.stats()
        # Admission counts each prompt it prefills and looks it up in the prefix
        # cache first: the dropped request did neither.
        assert after.prompt_tokens == before.prompt_tokens
        assert cache.statistics().queries == queries_before
        assert (after.running, after.waiting) == (0, 0)


async def test_a_second_request_under_a_live_id_is_refused(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Only one of me")
        # Never a special token (end of text among them): it runs to its 30 tokens.
        params = SamplingParams(max_tokens=30, logit_bias={token: -100.0 for token in range(7)})
        first = Generate(request_id="dup", prompt=prompt, params=params)
        async with h.client.stream(first) as events:
            again = await h.system.ref("generation").ask(first, timeout=10)
            assert isinstance(again, Failed)
            assert again.kind is FailureKind.INVALID_REQUEST
            outcome = Outcome()
            async for event in events:
                record(outcome, event)
        assert isinstance(outcome.end, Finished)
        assert outcome.end.completion_tokens == 30
        stats = await h.stats()
        assert (stats.running, stats.waiting) == (0, 0)


async def test_negative_max_tokens_is_a_typed_failure(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        outcome = await h.run([1, 2, 3], max_tokens=-5)
        assert isinstance(outcome.end, Failed)
        assert outcome.end.kind is FailureKind.INVALID_REQUEST
