"""logprobs and top_logprobs end to end, checked against a direct forward pass of the model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.generation.engine.constraints import llg_tokenizer
from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name
from tests.test_logprobs import direct_logprobs

pytestmark = pytest.mark.timeout(180)

MESSAGES: Any = [{"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("logprobs")) as running:
        yield running


def token_ids(loaded_model: Any) -> dict[bytes, int]:
    """Each token's exact bytes to its id (unique in a BPE vocabulary)."""
    reader = llg_tokenizer(loaded_model.tokenizer)
    return {reader.decode_bytes([i]): i for i in range(loaded_model.model.args.vocab_size)}


def test_chat_logprobs_match_a_direct_forward_pass(server: Server, loaded_model: Any) -> None:
    answer = client(server).chat.completions.create(
        model=model_name(server),
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert answer.usage is not None and len(content) == answer.usage.completion_tokens
    ids = token_ids(loaded_model)
    generated = [ids[bytes(entry.bytes or [])] for entry in content]
    prompt = list(loaded_model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True))
    expected = direct_logprobs(loaded_model.model, prompt, generated)
    for position, entry in enumerate(content):
        assert entry.logprob == pytest.approx(
            expected[position][generated[position]].item(), abs=2e-3
        )
        assert len(entry.top_logprobs) == 4
        assert entry.top_logprobs[0].token == entry.token  # greedy: the most likely one
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
    assert "".join(entry.token for entry in content) == choice.message.content


def test_streamed_logprobs_are_the_same_as_whole_ones(server: Server) -> None:
    fields: Any = {
        "model": model_name(server),
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0.8,
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = client(server).chat.completions.create(**fields).choices[0].logprobs
    assert whole is not None and whole.content is not None
    streamed = []
    for chunk in client(server).chat.completions.create(**fields, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole.content]


def test_text_completion_logprobs_in_the_legacy_shape(server: Server) -> None:
    answer = client(server).completions.create(
        model=model_name(server), prompt="Once upon a", max_tokens=6, temperature=0, logprobs=3
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None
    legacy = choice.logprobs
    assert legacy.tokens is not None and legacy.token_logprobs is not None
    assert legacy.text_offset is not None and legacy.top_logprobs is not None
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.text_offset) == 6
    assert "".join(legacy.tokens) == choice.text
    assert legacy.text_offset == sorted(legacy.text_offset) and legacy.text_offset[0] == 0
    rows = zip(legacy.tokens, legacy.token_logprobs, legacy.top_logprobs, strict=True)
    for token, value, top in rows:
        assert len(top) <= 3 and top[token] == pytest.approx(value)


def test_requests_without_logprobs_get_null(server: Server) -> None:
    answer = client(server).chat.completions.create(
        model=model_name(server), messages=MESSAGES, max_tokens=3
    )
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("path", "fields", "status"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, 400),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, 422),
        ("/v1/completions", {"logprobs": 6}, 422),
    ],
)
def test_logprob_fields_out_of_range_are_refused(
    server: Server, path: str, fields: dict[str, Any], status: int
) -> None:
    body: dict[str, Any] = {"model": model_name(server), "max_tokens": 2, **fields}
    body.update({"messages": MESSAGES} if "chat" in path else {"prompt": "x"})
    response = httpx.post(server.url + path, json=body, timeout=30)
    problem = assert_problem(response, status)
    assert "logprobs" in str(problem["detail"])
