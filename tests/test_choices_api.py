"""n > 1 end to end: several choices, one prompt count, each with its own seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name

pytestmark = pytest.mark.timeout(180)

MESSAGES: Any = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("choices")) as running:
        yield running


def chat(server: Server, **fields: Any) -> Any:
    return client(server).chat.completions.create(
        model=model_name(server), messages=MESSAGES, max_tokens=8, temperature=1.0, **fields
    )


def test_three_choices_count_the_prompt_once_and_each_follows_its_seed(server: Server) -> None:
    three = chat(server, n=3, seed=40)
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    alone = [chat(server, seed=40 + i) for i in range(3)]
    assert [c.message.content for c in three.choices] == [
        a.choices[0].message.content for a in alone
    ]
    assert len({c.message.content for c in three.choices}) == 3
    assert three.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert three.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert three.usage.total_tokens == three.usage.prompt_tokens + three.usage.completion_tokens


def test_streamed_choices_carry_their_index_and_finish_each(server: Server) -> None:
    whole = chat(server, n=2, seed=7)
    texts = {0: "", 1: ""}
    finished: dict[int, str] = {}
    usage = None
    for chunk in chat(server, n=2, seed=7, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert set(finished) == {0, 1}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_text_completions_take_n_with_logprobs(server: Server) -> None:
    answer = client(server).completions.create(
        model=model_name(server), prompt="Colours:", max_tokens=5, n=2, seed=3, logprobs=1
    )
    assert [choice.index for choice in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.tokens is not None
        assert "".join(choice.logprobs.tokens) == choice.text


def test_too_many_choices_are_refused(server: Server) -> None:
    body = {"model": model_name(server), "messages": MESSAGES, "n": 17}
    problem = assert_problem(
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30), 422
    )
    assert "`n`" in str(problem["detail"])
