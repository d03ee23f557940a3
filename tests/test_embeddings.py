"""Embeddings: pooled in the engine between decode steps, served at ``/v1/embeddings``.

The generated model has random weights, so "similar" means sharing most
tokens: its mean-pooled states still put such texts closer than unrelated
ones, which is what the pooling (not the model) is responsible for.
"""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from actors.generation.engine.embedding_queue import EmbeddingQueue, pooled
from actors.generation.protocol import Embed, Failed, FailureKind, Finished, FinishReason
from tests.generation_harness import Outcome, harness, record
from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name
from tests.test_api_metrics import eventually, metrics_text, samples, value

pytestmark = pytest.mark.timeout(120)


def embed(request_id: str, *inputs: list[int], deadline: float | None = None) -> Embed:
    return Embed(request_id=request_id, inputs=list(inputs), deadline=deadline)


def floats(vector: bytes) -> list[float]:
    """A vector as the engine sends it (little-endian float32) as floats."""
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))


def vectors_of(event: object) -> list[list[float]]:
    assert isinstance(event, Finished) and event.embeddings is not None, event
    return [floats(vector) for vector in event.embeddings]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# -- in the engine --------------------------------------------------------------------


def test_the_queue_batches_within_its_token_budget(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=20)
    prompts = [[5 + i] * 8 for i in range(3)]
    for index, prompt in enumerate(prompts):
        assert queue.add(embed(f"e{index}", prompt)) is None
    first = queue.step()  # two prompts of 8 fit 20 tokens padded; a third would not
    assert [event.request_id for event in first] == ["e0", "e1"]
    second = queue.step()
    assert [event.request_id for event in second] == ["e2"] and not queue
    alone = floats(pooled(loaded_model.model, [prompts[0]])[0])
    for event in [*first, *second]:
        (vector,) = vectors_of(event)
        assert isinstance(event, Finished)
        assert event.reason is FinishReason.STOP and event.prompt_tokens == 8
        assert math.isclose(cosine(vector, vector), 1.0, rel_tol=1e-5)
    # Batched or alone, a prompt gets the same vector (right padding is never attended to).
    (batched,) = vectors_of(first[0])
    assert max(abs(x - y) for x, y in zip(batched, alone, strict=True)) < 1e-5


def test_one_request_of_many_inputs_is_answered_once_in_order(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=16)
    inputs = [[5 + i, 6 + i, 7 + i, 8 + i] for i in range(10)]
    assert queue.add(embed("many", *inputs)) is None
    assert queue.add(embed("other", [9, 9])) is None
    events = []
    while queue:
        events.extend(queue.step())
    # Four inputs of 4 tokens a pass: the one request ends once, after its last.
    assert [event.request_id for event in events] == ["many", "other"]
    many = events[0]
    assert isinstance(many, Finished) and many.prompt_tokens == 40
    alone = [floats(vector) for vector in pooled(loaded_model.model, inputs)]
    for got, want in zip(vectors_of(many), alone, strict=True):
        assert max(abs(x - y) for x, y in zip(got, want, strict=True)) < 1e-5


def test_a_prompt_longer_than_the_budget_is_embedded_alone_in_chunks(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=8)
    long_prompt = [5 + (i % 50) for i in range(20)]
    queue.add(embed("long", long_prompt))
    queue.add(embed("short", [7, 8, 9]))
    assert queue.step() == [] and queue.step() == []  # 8 + 8 tokens: not done yet
    (done,) = queue.step()  # the last 4 tokens
    assert done.request_id == "long"
    whole = floats(pooled(loaded_model.model, [long_prompt])[0])
    (vector,) = vectors_of(done)
    assert max(abs(x - y) for x, y in zip(vector, whole, strict=True)) < 1e-4
    (short,) = queue.step()
    assert isinstance(short, Finished) and short.request_id == "short" and not queue


def test_a_failed_pass_fails_only_its_own_requests(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=8)
    queue.add(embed("long", [5] * 20, [5, 6]))
    queue.add(embed("waiting", [6, 7]))
    assert queue.step() == []  # the long input's first chunk: it is in the pass now
    (failed,) = queue.fail_pass(FailureKind.OUT_OF_MEMORY, "out of memory; retry later", True)
    assert isinstance(failed, Failed) and failed.request_id == "long" and failed.retryable
    # The failed request's other input is gone with it.
    (left,) = queue.step()
    assert isinstance(left, Finished) and left.request_id == "waiting" and not queue


def test_an_expired_request_is_dropped_before_any_work(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=64)
    queue.add(embed("late", [5, 6, 7], [8, 9], deadline=time.time() - 1))
    queue.add(embed("on-time", [5, 6, 7], deadline=time.time() + 60))
    late, on_time = queue.step()
    assert isinstance(late, Failed) and late.kind is FailureKind.DEADLINE_EXCEEDED
    assert len(vectors_of(on_time)) == 1 and not queue


def test_cancelled_refused_and_drained_requests_each_get_one_end(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=64)
    window = loaded_model.context_length
    for request_id, inputs, kind in [
        ("none", [], FailureKind.INVALID_REQUEST),
        ("empty", [[5], []], FailureKind.INVALID_REQUEST),
        ("unknown-token", [[5], [10**9]], FailureKind.INVALID_REQUEST),
        ("too-long", [[5], [5] * (window + 1)], FailureKind.PROMPT_TOO_LONG),
    ]:
        refused = queue.add(embed(request_id, *inputs))
        assert isinstance(refused, Failed) and refused.kind is kind and not refused.retryable
    queue.add(embed("a", [5, 6], [7]))
    queue.add(embed("b", [7, 8]))
    duplicate = queue.add(embed("b", [1]))
    assert isinstance(duplicate, Failed) and duplicate.kind is FailureKind.INVALID_REQUEST
    cancelled = queue.cancel("a")
    assert isinstance(cancelled, Finished) and cancelled.reason is FinishReason.CANCELLED
    assert cancelled.prompt_tokens == 3
    assert queue.cancel("a") is None
    assert [request.request_id for request in queue.drain()] == ["b"] and not queue


def test_a_request_cancelled_halfway_leaves_no_input_behind(loaded_model: Any) -> None:
    queue = EmbeddingQueue(loaded_model, token_budget=4)
    queue.add(embed("half", [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]))
    assert queue.step() == []  # one of its three inputs is done
    assert isinstance(queue.cancel("half"), Finished) and not queue
    assert queue.step() == []


def test_a_pass_that_fails_leaves_its_batch_to_be_drained(loaded_model: Any) -> None:
    @dataclass
    class Broken:
        model: Any
        tokenizer: Any
        context_length: int
        eos_token_ids: frozenset[int]

    class Exploding:
        args = loaded_model.model.args

        def model(self, tokens: Any) -> Any:
            raise RuntimeError("a native failure")

    broken = Broken(Exploding(), loaded_model.tokenizer, 64, loaded_model.eos_token_ids)
    queue = EmbeddingQueue(broken, token_budget=64)
    queue.add(embed("x", [5, 6]))
    with pytest.raises(RuntimeError):
        queue.step()
    # The engine fails what it drains when it dies: the request is not lost.
    assert [request.request_id for request in queue.drain()] == ["x"]


async def test_embeddings_and_generation_share_the_engine(loaded_model: Any) -> None:
    async with harness(loaded_model) as h:
        story: Outcome = Outcome()
        vectors: dict[str, Finished] = {}

        # Never an end-of-text token: it runs to its 40 tokens, whatever the
        # sampler draws beside the embeddings (sampled, unseeded).
        no_eos = {token: -100.0 for token in loaded_model.eos_token_ids}

        async def generate() -> None:
            outcome = await h.run(h.prompt("Once"), max_tokens=40, logit_bias=no_eos)
            story.__dict__.update(outcome.__dict__)

        async def one(index: int, text: str) -> None:
            outcome = Outcome()
            async with h.client.stream(embed(f"emb{index}", h.prompt(text))) as events:
                async for event in events:
                    record(outcome, event)
            assert isinstance(outcome.end, Finished) and not outcome.tokens
            vectors[text] = outcome.end

        async with anyio.create_task_group() as tg:
            tg.start_soon(generate)
            for index, text in enumerate(["red apples", "green pears", "blue skies"]):
                tg.start_soon(one, index, text)
        assert isinstance(story.end, Finished) and len(story.tokens) == 40
        assert all(len(vectors_of(end)) == 1 for end in vectors.values())
        stats = await h.stats()
        assert stats.embedding_size == len(vectors_of(vectors["red apples"])[0])


# -- over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("embeddings")) as running:
        yield running


def test_a_string_and_a_batch_with_the_openai_client(server: Server) -> None:
    api = client(server)
    model = model_name(server)
    one = api.embeddings.create(
        model=model, input="The cat sat on the mat.", encoding_format="float"
    )
    (only,) = one.data
    assert only.index == 0 and math.isclose(
        cosine(only.embedding, only.embedding), 1.0, rel_tol=1e-5
    )
    assert one.usage.prompt_tokens == one.usage.total_tokens > 0
    texts = [
        "The cat sat on the mat.",
        "The cat sat on the mat!",
        "Zebras compute 9731 quanta",
        "The cat sat on the mat.",
    ]
    batch = api.embeddings.create(model=model, input=texts, encoding_format="float")
    assert [item.index for item in batch.data] == [0, 1, 2, 3]
    vectors = [item.embedding for item in batch.data]
    assert vectors[0] == vectors[3]  # identical inputs, identical vectors
    assert max(abs(x - y) for x, y in zip(vectors[0], only.embedding, strict=True)) < 1e-5
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    singles = [api.embeddings.create(model=model, input=text).usage.prompt_tokens for text in texts]
    assert batch.usage.prompt_tokens == sum(singles)


def test_base64_is_little_endian_float32_of_the_same_vector(server: Server) -> None:
    body = {"model": model_name(server), "input": ["hello world"], "encoding_format": "base64"}
    packed = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30).json()["data"][0][
        "embedding"
    ]
    raw = base64.b64decode(packed)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    floats = client(server).embeddings.create(
        model=model_name(server), input="hello world", encoding_format="float"
    )
    assert max(abs(x - y) for x, y in zip(decoded, floats.data[0].embedding, strict=True)) < 1e-6
    # The openai client asks for base64 by default and decodes it itself.
    default = client(server).embeddings.create(model=model_name(server), input="hello world")
    assert len(default.data[0].embedding) == len(decoded)


def test_token_ids_embed_like_their_text(server: Server) -> None:
    url = server.url + "/v1/embeddings"
    model = model_name(server)
    text = httpx.post(url, json={"model": model, "input": "hello world"}, timeout=30).json()
    tokens = text["usage"]["prompt_tokens"]
    count = httpx.post(
        server.url + "/v1/completions",
        json={"model": model, "prompt": "hello world", "max_tokens": 1, "logprobs": 0},
        timeout=30,
    ).json()
    assert count["usage"]["prompt_tokens"] == tokens
    ids = httpx.post(url, json={"model": model, "input": [[5, 6, 7], [8, 9]]}, timeout=30).json()
    assert [item["index"] for item in ids["data"]] == [0, 1] and ids["usage"]["prompt_tokens"] == 5


def test_dimensions_only_as_the_models_own(server: Server) -> None:
    url = server.url + "/v1/embeddings"
    model = model_name(server)
    size = len(
        httpx.post(url, json={"model": model, "input": "x"}, timeout=30).json()["data"][0][
            "embedding"
        ]
    )
    same = httpx.post(url, json={"model": model, "input": "x", "dimensions": size}, timeout=30)
    assert same.status_code == 200, same.text
    shorter = assert_problem(
        httpx.post(url, json={"model": model, "input": "x", "dimensions": 8}, timeout=30), 422
    )
    assert "cannot be shortened" in str(shorter["detail"])
    for bad in ("", [""], [1, "a"], []):
        assert_problem(httpx.post(url, json={"model": model, "input": bad}, timeout=30), 422)
    assert_problem(httpx.post(url, json={"model": "other", "input": "x"}, timeout=30), 404)


def test_embeddings_are_counted_in_the_metrics(server: Server) -> None:
    before = value(
        samples(metrics_text(server)), "troupe_requests_total", endpoint="embeddings", status="200"
    )
    client(server).embeddings.create(model=model_name(server), input=["a b", "c d"])

    def counted() -> float:
        return value(
            samples(metrics_text(server)),
            "troupe_requests_total",
            endpoint="embeddings",
            status="200",
        )

    # Reported to the metrics actor as the response ends: polled, not read at once.
    eventually(lambda: counted() == before + 1)


def test_the_most_inputs_a_request_may_carry_travel_as_one(server: Server) -> None:
    # 2,048 inputs (OpenAI's limit) are one engine request: answered whole, in order.
    # One token each: the count of inputs is what is tested, and the suite's
    # reference BLAS makes every token of a forward pass count.
    inputs = [[5 + index % 7] for index in range(2048)]
    body = {"model": model_name(server), "input": inputs, "encoding_format": "base64"}
    response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 2048
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(2048))
    assert data[0]["embedding"] == data[7]["embedding"] != data[1]["embedding"]
    one = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": model_name(server), "input": [8], "encoding_format": "base64"},
        timeout=30,
    ).json()
    first = struct.unpack("<4f", base64.b64decode(one["data"][0]["embedding"])[:16])
    again = struct.unpack("<4f", base64.b64decode(data[3]["embedding"])[:16])
    assert max(abs(x - y) for x, y in zip(first, again, strict=True)) < 1e-5
