"""The benchmark's load generator: one outcome per request, every failure under its kind."""

from __future__ import annotations

import json
from collections import Counter

import anyio
import anyio.abc
import pytest

from benchmarks.harness.instant import InstantServer
from benchmarks.harness.loadgen import ErrorKind, Load, Target, run_load
from benchmarks.harness.servers import free_port
from benchmarks.harness.stats import percentile, summarize

MAX_TOKENS = 5
FAULT_KINDS = {
    "http500": ErrorKind.http(500),
    "http429": ErrorKind.http(429),
    "reset": ErrorKind.RESET,
    "close": ErrorKind.RESET,
    "nodone": ErrorKind.NO_DONE,
    "error": ErrorKind.STREAM_ERROR,
    "hang": ErrorKind.TIMEOUT,
}


def body(content: str, max_tokens: int = MAX_TOKENS) -> bytes:
    """A streaming chat request whose only message is ``content``."""
    messages = [{"role": "user", "content": content}]
    return json.dumps({"model": "m", "messages": messages, "max_tokens": max_tokens}).encode()


async def load_against_instant(bodies: list[bytes], concurrency: int, timeout: float) -> Load:
    """Run ``bodies`` against an in-process instant server on a free port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(InstantServer().serve, listener)
        target = Target.from_url(f"http://127.0.0.1:{port}")
        load = await run_load(target, bodies, concurrency, timeout=timeout)
        tg.cancel_scope.cancel()
    return load


@pytest.mark.timeout(30)
async def test_every_injected_failure_is_counted_once_under_its_kind() -> None:
    plan = ["ok", *FAULT_KINDS] * 3
    bodies = [body("hello" if kind == "ok" else f"fault:{kind}") for kind in plan]

    load = await load_against_instant(bodies, concurrency=4, timeout=0.5)

    assert [outcome.index for outcome in load.outcomes] == list(range(len(plan)))
    for kind, outcome in zip(plan, load.outcomes, strict=True):
        assert outcome.error == FAULT_KINDS.get(kind), kind
    ok = [outcome for outcome in load.outcomes if outcome.ok]
    assert len(ok) == 3
    assert all(o.tokens == MAX_TOKENS and o.first_token is not None for o in ok)
    stats = summarize(load)
    assert stats.requests == len(plan)
    assert stats.succeeded == 3
    assert stats.failed == len(plan) - 3
    assert stats.errors == dict(Counter(FAULT_KINDS[k] for k in plan if k != "ok"))
    assert stats.output_tokens == 3 * MAX_TOKENS
    assert stats.ttft_ms is not None and stats.ttft_ms.count == 3


@pytest.mark.timeout(30)
async def test_a_server_that_is_not_there_is_a_connect_error() -> None:
    target = Target.from_url(f"http://127.0.0.1:{free_port()}")

    load = await run_load(target, [body("hi")] * 3, 2, timeout=5)

    assert [outcome.error for outcome in load.outcomes] == [ErrorKind.CONNECT] * 3
    assert summarize(load).errors == {ErrorKind.CONNECT: 3}


@pytest.mark.timeout(30)
async def test_successful_streams_report_their_usage_and_ordered_times() -> None:
    bodies = [body(f"request {n}", max_tokens=n + 1) for n in range(8)]

    load = await load_against_instant(bodies, concurrency=2, timeout=5)

    assert [outcome.tokens for outcome in load.outcomes] == [n + 1 for n in range(8)]
    assert all(outcome.ok for outcome in load.outcomes)
    for outcome in load.outcomes:
        assert outcome.first_token is not None and outcome.last_token is not None
        assert outcome.start <= outcome.first_token <= outcome.last_token <= outcome.end


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
