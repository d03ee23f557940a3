"""The whole inference tree, driven through actor refs only."""

from __future__ import annotations

from typing import Any

import pytest

from actors.generation.protocol import Finished, Generate, SamplingParams, TokenChunk
from actors.kvcache.protocol import CacheStats, GetCacheStats, InjectCacheFaults
from actors.tree import InferenceSettings, build_inference
from runtime import ActorSystem, ManualClock
from runtime.breaker import BreakerConfig

pytestmark = pytest.mark.timeout(120)


async def generate(inference: Any, system: ActorSystem, rid: str, prompt: list[int]) -> Finished:
    request = Generate(
        request_id=rid, prompt=prompt, params=SamplingParams(max_tokens=6, temperature=0.0)
    )
    async with inference.client(system).stream(request) as events:
        async for event in events:
            if isinstance(event, Finished):
                return event
            assert isinstance(event, TokenChunk)
    raise AssertionError("the stream ended without Finished")


async def test_requests_are_served_cached_then_uncached_while_the_cache_is_degraded(
    loaded_model: Any,
) -> None:
    clock = ManualClock()
    settings = InferenceSettings(breaker=BreakerConfig(failure_threshold=2, cooldown=10.0))
    inference = build_inference(lambda: loaded_model, settings, clock=clock)
    prompt = list(loaded_model.tokenizer.encode("A shared system prompt for everyone. " * 4))
    async with ActorSystem(inference.spec, clock=clock) as system:
        kv = system.ref("kvcache")
        await generate(inference, system, "warm-1", [*prompt, 10])
        hit = await generate(inference, system, "warm-2", [*prompt, 11])
        assert hit.cached_tokens > 0

        await kv.ask(InjectCacheFaults(count=2), timeout=10)
        for n in range(2):  # two faulted operations open the breaker
            await generate(inference, system, f"fault-{n}", [*prompt, 12 + n])
        stats = await kv.ask(GetCacheStats(), timeout=10, expect=CacheStats)
        assert stats.breaker.state == "open"
        uncached = await generate(inference, system, "open", [*prompt, 20])
        assert uncached.cached_tokens == 0  # served, just without the cache
        assert inference.host is not None and inference.host.loads == 1

        clock.advance(10.0)  # cool-down over: the next request is the probe
        probe = await generate(inference, system, "probe", [*prompt, 21])
        assert probe.reason == "length"
        stats = await kv.ask(GetCacheStats(), timeout=10, expect=CacheStats)
        assert stats.breaker.state in ("half_open", "closed")
