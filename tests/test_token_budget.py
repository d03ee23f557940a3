"""The engine's token budget: no step computes more tokens than it allows, decodes first.

The engine runs on its thread over the tiny model, whose forward passes are
counted: every call's batch times its length is the tokens it computed. The
steps are told apart by the engine's step counter, read at each call (the
engine thread both calls the model and counts the steps, so nothing races).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.engine.token_budget import TokenBudget
from actors.generation.protocol import (
    Failed,
    Finished,
    Generate,
    SamplingParams,
    StreamEvent,
    TokenChunk,
)
from actors.model.loader import LoadedModel

pytestmark = pytest.mark.timeout(180)


class CountingModel:
    """The model, with every forward pass's token count recorded by engine step."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.engine: Engine | None = None
        self.per_step: dict[int, int] = defaultdict(int)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        assert self.engine is not None
        batch, length = inputs.shape[:2]
        self.per_step[self.engine.steps] += batch * length
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclass
class Counted:
    """A loaded model whose forward passes are counted (what the engine needs of one)."""

    model: CountingModel
    tokenizer: Any
    context_length: int
    eos_token_ids: frozenset[int]


class Events:
    """The engine's events, with a condition to wait on."""

    def __init__(self) -> None:
        self.tokens: dict[str, int] = defaultdict(int)
        self.first_at: dict[str, int] = {}
        self.ended: set[str] = set()
        self.changed = threading.Condition()
        self.steps: list[int] = []

    def emit(self, events: list[StreamEvent], step: int) -> None:
        with self.changed:
            for event in events:
                match event:
                    case TokenChunk(request_id=rid, token_ids=ids):
                        self.tokens[rid] += len(ids)
                        self.first_at.setdefault(rid, step)
                    case Finished(request_id=rid) | Failed(request_id=rid):
                        self.ended.add(rid)
                        self.first_at.setdefault(rid, step)
            self.changed.notify_all()

    def wait(self, done: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(done, 120), "the engine made no progress"


def run_long_prompt(loaded_model: LoadedModel, budget: int) -> tuple[dict[int, int], Events]:
    """4 streams decode; a 300-token prompt arrives; every step's token count."""
    model = CountingModel(loaded_model.model)
    counted = Counted(
        model, loaded_model.tokenizer, loaded_model.context_length, loaded_model.eos_token_ids
    )
    events = Events()
    holder: list[Engine] = []

    def emit(batch: list[StreamEvent]) -> None:
        events.emit(batch, holder[0].steps)

    engine = Engine(counted, emit, print, config=EngineConfig(max_batched_tokens=budget))
    holder.append(engine)
    model.engine = engine
    engine.start()
    try:
        tok = loaded_model.tokenizer
        streams = [f"s{n}" for n in range(4)]
        for n, rid in enumerate(streams):
            prompt = list(tok.encode(f"stream {n} goes on"))
            params = SamplingParams(max_tokens=400, temperature=0.0)
            engine.submit(Generate(request_id=rid, prompt=prompt, params=params))
        events.wait(lambda: all(events.tokens[r] >= 3 for r in streams))
        arrived = engine.steps
        long = (list(tok.encode(" ".join(["a long prompt"] * 200))) * 2)[:300]
        params = SamplingParams(max_tokens=2, temperature=0.0)
        engine.submit(Generate(request_id="long", prompt=long, params=params))
        events.wait(lambda: "long" in events.ended)
        events.steps = [arrived, events.first_at["long"]]
    finally:
        engine.stop()
        assert engine.join(30)
    return dict(model.per_step), events


def test_no_step_computes_more_than_the_budget_and_streams_keep_decoding(
    loaded_model: LoadedModel,
) -> None:
    per_step, events = run_long_prompt(loaded_model, budget=48)
    arrived, first = events.steps
    during = [per_step.get(step, 0) for step in range(arrived + 1, first)]
    assert max(per_step.values()) <= 48
    # The prompt needed several steps, and each still decoded the 4 streams.
    assert len(during) >= 300 // 48
    assert all(tokens >= 4 for tokens in during)


def test_without_a_budget_a_step_carries_a_whole_chunk(loaded_model: LoadedModel) -> None:
    per_step, _ = run_long_prompt(loaded_model, budget=0)
    assert max(per_step.values()) >= 256  # the unbounded step this budget removes


def test_the_budget_shares_what_decodes_leave_and_admits_worthwhile_chunks() -> None:
    budget = TokenBudget(max_batched_tokens=256, prefill_batch_size=8, prefill_step_size=512)
    assert budget.chunk(decoding=1, remaining=[2000]) == 255
    assert budget.chunk(decoding=8, remaining=[2000]) == 248
    # Nothing decodes: no stream to protect, so prompts take the unbudgeted chunk.
    assert budget.chunk(decoding=0, remaining=[2000] * 8) == 512
    assert budget.admits(decoding=0, remaining=[2000] * 7, prompt=2000)
    assert budget.chunk(decoding=8, remaining=[2000, 900, 30, 10]) == 62
    assert budget.chunk(decoding=8, remaining=[20, 10]) == 20  # no more than any needs
    # A long prompt in prefill leaves room for a few more, each with a real chunk ...
    assert budget.admits(decoding=8, remaining=[2000] * 3, prompt=500)
    assert not budget.admits(decoding=8, remaining=[2000] * 7, prompt=500)  # 31 each
    # ... and short prompts join many at a time, up to the batch's prompt limit.
    assert budget.admits(decoding=8, remaining=[15] * 7, prompt=15)
    assert not budget.admits(decoding=8, remaining=[15] * 8, prompt=15)
    tight = TokenBudget(max_batched_tokens=64, prefill_batch_size=8, prefill_step_size=512)
    assert tight.admits(decoding=60, remaining=[], prompt=2000)  # one prompt always may
    assert tight.chunk(decoding=60, remaining=[2000]) == 4
    assert tight.chunk(decoding=80, remaining=[2000]) == 1  # decodes first, however many
    off = TokenBudget(max_batched_tokens=0, prefill_batch_size=8, prefill_step_size=512)
    assert off.chunk(32, [5000] * 8) == 512
    assert off.admits(32, [5000] * 7, 5000) and not off.admits(32, [5000] * 8, 5000)
