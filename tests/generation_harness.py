"""A generation actor under a one-child supervisor, and a recorder of its streams.

Shared by the generation and sampling tests: each request is run through the
real :class:`~actors.generation.client.GenerationClient` on the real model.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from actors.generation.client import GenerationClient
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.inprocess.actor import ThreadedGeneration
from actors.generation.inprocess.host import ModelHost
from actors.generation.protocol import (
    EngineStats,
    Failed,
    Finished,
    Generate,
    GetEngineStats,
    SamplingParams,
    StreamEvent,
    TokenChunk,
)
from actors.kvcache.store import PrefixCache
from runtime import NO_BACKOFF, ActorSystem, ChildSpec, SupervisorSpec

_ids = itertools.count()


@dataclass
class Outcome:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    chunks: list[TokenChunk] = field(default_factory=list)
    end: Finished | Failed | None = None


@dataclass
class Harness:
    system: ActorSystem
    client: GenerationClient
    host: ModelHost[Any]
    tokenizer: Any
    eos: int
    """The model's end-of-sequence token id."""

    def prompt(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    async def run(self, prompt: list[int], **params: Any) -> Outcome:
        return await self.run_resumed(prompt, [], **params)

    async def run_resumed(self, prompt: list[int], resumed: list[int], **params: Any) -> Outcome:
        """Run ``prompt`` as if ``resumed`` had been generated and delivered already."""
        request = Generate(
            request_id=f"r{next(_ids)}",
            prompt=prompt,
            params=SamplingParams(**params),
            resumed=resumed,
        )
        outcome = Outcome()
        async with self.client.stream(request) as events:
            async for event in events:
                record(outcome, event)
        return outcome

    async def stats(self) -> EngineStats:
        return await self.system.ref("generation").ask(
            GetEngineStats(), timeout=10, expect=EngineStats
        )


def record(outcome: Outcome, event: StreamEvent) -> None:
    match event:
        case TokenChunk(text=text, token_ids=ids):
            outcome.text += text
            outcome.tokens.extend(ids)
            outcome.chunks.append(event)
        case Finished() | Failed():
            assert outcome.end is None, "exactly one terminal event"
            outcome.end = event


@asynccontextmanager
async def harness(
    loaded_model: Any, *, prefix_store: PrefixCache | None = None, **config: Any
) -> AsyncIterator[Harness]:
    host: ModelHost[Any] = ModelHost(lambda: loaded_model)
    engine_config = EngineConfig(**config)
    spec = SupervisorSpec(
        "root",
        [
            ChildSpec(
                "generation",
                lambda: ThreadedGeneration(host, prefix_store=prefix_store, config=engine_config),
                shutdown=30.0,
            )
        ],
        backoff=NO_BACKOFF,
    )
    async with ActorSystem(spec) as system:
        client = GenerationClient(system.ref("generation"), system.open_inbox)
        eos = min(loaded_model.eos_token_ids)
        yield Harness(system, client, host, loaded_model.tokenizer, eos)


GREEDY = {"temperature": 0.0}
