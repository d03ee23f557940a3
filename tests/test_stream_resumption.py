"""A stream cut anywhere is finished by another server, byte for byte (no Ray).

The replica bridge is driven with the real app (its actors, a thread engine,
the tiny model, greedy decoding): one server streams a reply whole; then, for
several cut points, a second server is given what the first had sent up to
there (:class:`~api.serving.resumption.ResumeFrom`, as the ingress builds it) and
finishes the stream (a fresh server each time, as after a replica's death).
What the client would have received, the first server's bytes up to the cut
then the second's, must be the uncut stream exactly: same id and ``created``,
no event twice or missing, and usage counted across both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from actors.generation.protocol import Finished, FinishReason, Generate, SamplingParams, TokenChunk
from api.app import TroupeApp, build_asgi
from api.cli.serve import build_tree
from api.config.settings import Settings
from api.replicas.bridge import AppBridge
from api.replicas.messages import ForwardedRequest, ResponseBody, ResponseHead, ResponsePart
from api.serving.resumption import ResumeFrom, SentSoFar, StreamProgress, resumed

pytestmark = pytest.mark.timeout(120)

USER = "Tell me about the sea, the ships, and the sailors who cross it."
BODIES = {
    "/v1/chat/completions": {
        "messages": [{"role": "user", "content": USER}],
        "max_tokens": 24,
        "logprobs": True,
        "top_logprobs": 2,
        "stream_options": {"include_usage": True},
    },
    "/v1/messages": {"messages": [{"role": "user", "content": USER}], "max_tokens": 24},
    "/v1/responses": {"input": USER, "max_output_tokens": 24},
}


@pytest.fixture
def anyio_backend() -> str:
    """Ray Serve runs replica code on asyncio only."""
    return "asyncio"


@asynccontextmanager
async def bridged(model_dir: Path, name: str) -> AsyncIterator[AppBridge]:
    settings = Settings(model=str(model_dir), engine="thread")
    app = TroupeApp(settings, await build_tree(settings))
    bridge = AppBridge(build_asgi(app), replica=name)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.aclose()


def forwarded(path: str, resume: ResumeFrom | None = None) -> ForwardedRequest:
    body = {"model": "tiny", "stream": True, "temperature": 0, **BODIES[path]}
    return ForwardedRequest(
        method="POST",
        path=path,
        headers=[(b"content-type", b"application/json"), (b"x-request-id", b"req-cut")],
        body=json.dumps(body).encode(),
        resume=resume,
    )


async def collect(bridge: AppBridge, request: ForwardedRequest) -> list[ResponsePart]:
    return [part async for part in bridge.exchange(request)]


def body_of(parts: list[ResponsePart]) -> bytes:
    return b"".join(part.data for part in parts if isinstance(part, ResponseBody))


def sent_up_to(parts: list[ResponsePart], cut: int) -> SentSoFar:
    """What the ingress knows once it has sent the head and the first ``cut`` body parts."""
    sent = SentSoFar()
    head, *body = parts
    assert isinstance(head, ResponseHead)
    sent.note(head.progress)
    for part in body[:cut]:
        assert isinstance(part, ResponseBody)
        sent.note(part.progress)
    return sent


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_stream_cut_anywhere_is_finished_exactly_by_another_server(
    model_dir: Path, path: str
) -> None:
    async with bridged(model_dir, "first") as first:
        whole = await collect(first, forwarded(path))
        head, *body = whole
        assert isinstance(head, ResponseHead) and head.status == 200
        assert head.progress is not None and head.progress.created is not None
        reported = [p.progress for p in body if isinstance(p, ResponseBody) and p.progress]
        assert sum(len(p.chunks) for p in reported) > 4, "too short a stream to cut"
        cuts = sorted({0, 1, 2, len(body) // 2, len(body) - 2, len(body) - 1})
        for cut in cuts:
            resume = sent_up_to(whole, cut).resume_from()
            assert resume is not None
            # A fresh server each time: one that had cached the prompt would
            # say so in the usage, which is right, but not byte for byte.
            async with bridged(model_dir, f"second-{cut}") as second:
                rest = await collect(second, forwarded(path, resume))
            rest_head = rest[0]
            assert isinstance(rest_head, ResponseHead) and rest_head.status == 200
            assert body_of(whole[: cut + 1]) + body_of(rest) == body_of(whole), f"cut {cut}"

        # Cut after the end was reported, before it was sent: only the end is left.
        last = body[-1]
        assert isinstance(last, ResponseBody) and last.progress and last.progress.end
        resume = sent_up_to(whole, len(body) - 1).resume_from()
        assert resume is not None and resume.end is None
        resume = msgspec.structs.replace(resume, end=last.progress.end)
        async with bridged(model_dir, "second-end") as second:
            rest = await collect(second, forwarded(path, resume))
        assert body_of(rest) == last.data


async def test_a_stream_of_several_choices_is_not_resumable(model_dir: Path) -> None:
    request = forwarded("/v1/chat/completions")
    body = json.loads(request.body) | {"n": 2, "logprobs": False, "top_logprobs": None}
    two = msgspec.structs.replace(request, body=json.dumps(body).encode())
    async with bridged(model_dir, "only") as bridge:
        head, *parts = await collect(bridge, two)
        assert isinstance(head, ResponseHead) and head.status == 200
        assert head.progress is None
        assert all(isinstance(p, ResponseBody) and p.progress is None for p in parts)
        resumed_two = msgspec.structs.replace(two, resume=ResumeFrom(created=1, chunks=[]))
        head, *_ = await collect(bridge, resumed_two)
        assert isinstance(head, ResponseHead) and head.status == 400


def test_what_the_client_has_decides_how_the_engine_goes_on() -> None:
    generate = Generate(request_id="r", prompt=[1, 2, 3], params=SamplingParams(max_tokens=4))
    chunk = TokenChunk(request_id="r", text="ab", token_ids=[7, 8])
    going_on = resumed(generate, ResumeFrom(created=5, chunks=[chunk]), prompt_tokens=3)
    assert isinstance(going_on, Generate) and going_on.resumed == [7, 8]
    assert going_on.params.max_tokens == 4  # the engine counts the resumed tokens against it

    full = ResumeFrom(created=5, chunks=[chunk, chunk])
    ended = resumed(generate, full, prompt_tokens=3)
    assert isinstance(ended, Finished) and ended.reason is FinishReason.LENGTH
    assert (ended.prompt_tokens, ended.completion_tokens) == (3, 4)

    end = Finished(request_id="r", reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2)
    assert resumed(generate, ResumeFrom(created=5, chunks=[chunk], end=end), 3) is end

    sent = SentSoFar()
    assert sent.resume_from() is None  # nothing said it was resumable
    sent.note(StreamProgress(created=5))
    sent.note(StreamProgress(chunks=[chunk]))
    sent.note(StreamProgress(chunks=[chunk], end=end))
    assert sent.resume_from() == ResumeFrom(created=5, chunks=[chunk, chunk], end=end)
    assert sent.tokens == 4
