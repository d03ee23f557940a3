"""Grammar-constrained decoding in the engine: per-row masks inside the continuous batch."""

from __future__ import annotations

import json
from typing import Any

import anyio
import jsonschema
import pytest

from actors.generation.engine.constraints import (
    ConstraintError,
    json_object_grammar,
    json_schema_grammar,
)
from actors.generation.protocol import Failed, FailureKind, Finished, FinishReason
from tests.generation_harness import GREEDY, Outcome, harness

pytestmark = pytest.mark.timeout(120)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}


def finished_stop(outcome: Outcome) -> None:
    assert isinstance(outcome.end, Finished), outcome.end
    assert outcome.end.reason is FinishReason.STOP, outcome.end


async def test_a_schema_constrained_request_gives_valid_json_over_many_seeds(
    loaded_model: Any,
) -> None:
    grammar = json_schema_grammar(PERSON)
    async with harness(loaded_model) as h:
        prompt = h.prompt("Describe a person:")
        for seed in range(12):
            outcome = await h.run(
                prompt, grammar=grammar, temperature=1.0, seed=seed, max_tokens=200
            )
            finished_stop(outcome)
            jsonschema.validate(json.loads(outcome.text), PERSON)


async def test_constrained_and_free_rows_share_the_batch_and_free_rows_are_unchanged(
    loaded_model: Any,
) -> None:
    grammar = json_schema_grammar(PERSON)
    async with harness(loaded_model) as h:
        prompts = [h.prompt(f"Row {n} says") for n in range(6)]
        alone = [await h.run(p, max_tokens=24, **GREEDY) for p in prompts[::2]]
        steps_before = (await h.stats()).steps
        results: dict[int, Outcome] = {}

        async def one(n: int) -> None:
            extra = {"grammar": grammar, "max_tokens": 200} if n % 2 else {"max_tokens": 24}
            results[n] = await h.run(prompts[n], **GREEDY, **extra)

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(one, n)
        steps = (await h.stats()).steps - steps_before
        assert [results[n].tokens for n in (0, 2, 4)] == [a.tokens for a in alone]
        for n in (1, 3, 5):
            finished_stop(results[n])
            jsonschema.validate(json.loads(results[n].text), PERSON)
        longest = max(len(o.tokens) for o in results.values())
        assert steps < longest + 30, "the six rows were decoded together, not one after another"


async def test_json_object_output_parses_as_an_object(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        prompt = h.prompt("Some JSON:")
        for seed in range(4):
            outcome = await h.run(
                prompt, grammar=json_object_grammar(), seed=seed, temperature=0.7, max_tokens=400
            )
            assert isinstance(outcome.end, Finished)
            if outcome.end.reason is FinishReason.STOP:
                assert isinstance(json.loads(outcome.text), dict)
            else:  # cut by max_tokens: a prefix of an object
                assert outcome.text.startswith("{")


async def test_a_resumed_constrained_request_continues_its_document(loaded_model: Any) -> None:
    grammar = json_schema_grammar(PERSON)
    async with harness(loaded_model) as h:
        prompt = h.prompt("Describe a person:")
        whole = await h.run(prompt, grammar=grammar, max_tokens=200, **GREEDY)
        finished_stop(whole)
        cut = 5
        resumed = await h.run_resumed(
            prompt, whole.tokens[:cut], grammar=grammar, max_tokens=200, **GREEDY
        )
        assert whole.tokens[:cut] + resumed.tokens == whole.tokens
        wrong = await h.run_resumed(prompt, [h.eos + 100], grammar=grammar, max_tokens=50)
        assert isinstance(wrong.end, Failed) and wrong.end.kind is FailureKind.INVALID_REQUEST


def test_unsupported_schema_keywords_are_named() -> None:
    cases: dict[str, dict[str, Any]] = {
        "if": {"type": "object", "if": {"required": ["a"]}},
        "Unknown format": {"type": "string", "format": "no-such-format"},
        "x-guidance": {"type": "object", "x-guidance": {"lenient": True}},
    }
    for named, schema in cases.items():
        with pytest.raises(ConstraintError, match=named):
            json_schema_grammar(schema)
    with pytest.raises(ConstraintError, match="larger than"):
        json_schema_grammar({"enum": ["x" * 1000] * 100})
