"""Bugs the fuzzer and the reliability runs found, each pinned by the smallest test."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import mlx.core as mx
import pytest

from actors.generation.engine.requests import admit as prepare
from actors.generation.engine.sampling import RequestSampler
from actors.generation.protocol import Failed, FailureKind, Finished, Generate, SamplingParams
from tests.generation_harness import harness


def test_a_top_k_beyond_the_vocabulary_keeps_every_token_instead_of_crashing() -> None:
    # Found by tests/test_fuzz.py: {"top_k": 1024} on a 512-token vocabulary
    # raised inside the engine, crashing it for every request in the batch.
    logprobs = mx.log(mx.softmax(mx.arange(8, dtype=mx.float32)[None, :], axis=-1))
    for top_k in (8, 9, 1024):
        sampler = RequestSampler(SamplingParams(temperature=1.0, top_k=top_k, seed=3))
        token = sampler(logprobs)
        mx.eval(token)
        assert 0 <= int(token.item()) < 8


def test_a_negative_seed_seeds_the_sampler_instead_of_crashing_the_engine() -> None:
    # Found by schemathesis: OpenAI's seeds are signed, MLX's keys unsigned; a
    # negative seed raised inside the engine and crashed it for the whole batch.
    logprobs = mx.log(mx.softmax(mx.arange(64, dtype=mx.float32)[None, :] / 8, axis=-1))

    def draws(seed: int) -> list[int]:
        sampler = RequestSampler(SamplingParams(temperature=1.0, seed=seed))
        return [int(sampler(logprobs).item()) for _ in range(16)]

    for seed in (-1, -(2**63), 2**63 - 1):
        assert draws(seed) == draws(seed)
    assert draws(-1) != draws(1)


async def test_a_request_that_cannot_be_prepared_fails_alone(
    loaded_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_seed = 13

    def admit_or_break(request: Generate, *args: Any) -> Any:
        if request.params.seed == poison_seed:
            raise TypeError("a bug in preparing one request")
        return prepare(request, *args)

    monkeypatch.setattr("actors.generation.engine.batch_engine.admit", admit_or_break)
    async with harness(loaded_model) as h:
        prompt = h.prompt("The weather")
        results: dict[str, Any] = {}

        async def run(name: str, seed: int) -> None:
            results[name] = await h.run(prompt, max_tokens=6, temperature=0.0, seed=seed)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "healthy", 1)
            tg.start_soon(run, "poison", poison_seed)
        poison = results["poison"].end
        assert isinstance(poison, Failed) and poison.kind is FailureKind.INVALID_REQUEST
        assert isinstance(results["healthy"].end, Finished)
        generation = h.system.status().root.find("generation")
        assert generation is not None and generation.restarts_total == 0


async def test_streams_flow_while_every_shared_worker_thread_is_busy(loaded_model: Any) -> None:
    # A review found the event pump took a thread of anyio's shared pool on every
    # engine step: a burst of other blocking work (tokenizing, audit reads)
    # stalled every stream. The pump now has a thread of its own.
    shared = anyio.to_thread.current_default_thread_limiter()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def occupy() -> None:
        entered.release()
        release.wait()

    async with harness(loaded_model) as h, anyio.create_task_group() as tg:
        total = int(shared.total_tokens)
        for _ in range(total):
            tg.start_soon(anyio.to_thread.run_sync, occupy)
        own = anyio.CapacityLimiter(1)
        for _ in range(total):  # every shared thread is taken, waiting on `release`
            await anyio.to_thread.run_sync(entered.acquire, limiter=own)
        assert shared.available_tokens == 0
        try:
            with anyio.fail_after(30):
                outcome = await h.run(h.prompt("The weather"), max_tokens=8, temperature=0.0)
            assert isinstance(outcome.end, Finished) and len(outcome.tokens) == 8
        finally:
            release.set()
