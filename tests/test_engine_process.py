"""The engine in its own process: killed, poisoned, stopped, crash-looping.

Every test runs a real ``troupe serve`` (the engine process is its default)
and signals the real engine process, found by the pid ``/v1/supervisor``
reports. What a client must see: a pause, never a lost, cut or repeated
answer, except for a request the engine dies with every time, which alone is
failed; and past the restart intensity, an exit with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.drills import ADMIN_KEY, DRILL_FLAGS, drill, model_name, troupe_status, until
from tests.load import percentile
from tests.server import Server, running_server

pytestmark = pytest.mark.timeout(300)

NO_EOS = {str(token): -100 for token in range(7)}
"""Bias against the special tokens: every request runs to ``max_tokens``."""
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def anyio_backend() -> str:
    """The server is a separate process; one client backend is enough."""
    return "asyncio"


@dataclass
class Streamed:
    """One streamed chat completion as its client saw it."""

    status: int = 0
    text: str = ""
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    first_token: anyio.Event = field(default_factory=anyio.Event)


async def stream(
    http: httpx.AsyncClient, body: dict[str, Any], request_id: str, into: Streamed | None = None
) -> Streamed:
    """Send a streaming chat completion and collect its text (in ``into``, if given)."""
    got = into or Streamed()
    headers = {"x-request-id": request_id}
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
        got.status = reply.status_code
        if reply.status_code != 200:
            got.error = json.loads(await reply.aread())
            got.first_token.set()
            return got
        async for line in reply.aiter_lines():
            data = line.removeprefix("data: ")
            if not line.startswith("data: ") or data == "[DONE]":
                continue
            event = json.loads(data)
            if "error" in event:
                got.error = event["error"]
                continue
            choice = event["choices"][0]
            got.text += choice["delta"].get("content") or ""
            got.first_token.set()
            got.finish_reason = choice.get("finish_reason") or got.finish_reason
    return got


def body(model: str, n: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Tell me about item {n}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": NO_EOS,
    }


def engine(server: Server) -> dict[str, Any]:
    """The engine's part of ``/v1/supervisor``."""
    reply = httpx.get(server.url + "/v1/supervisor", headers=ADMIN, timeout=10)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()["engine"]
    return found


def engine_pid(server: Server) -> int:
    pid = engine(server)["process"]["pid"]
    assert isinstance(pid, int)
    return pid


async def test_repeated_sigkills_under_streaming_load_lose_nothing(
    model_dir: Path, tmp_path: Path, long_run: bool, figures: dict[str, object]
) -> None:
    # The drill at full scale (make reliability): 10 kills under 32 clients.
    kills, clients, max_tokens = (10, 32, 40) if long_run else (3, 16, 40)
    flags = (
        *DRILL_FLAGS,
        *("--restart-intensity", str(kills * 2), "--restart-period", "120"),
        *("--restart-backoff-max", "0.2"),
    )
    with running_server(model_dir, tmp_path, *flags) as server:
        model = model_name(server)
        results: dict[int, Streamed] = {}
        killing = anyio.Event()
        numbers = iter(range(10**6))

        async def client_loop(http: httpx.AsyncClient) -> None:
            while not killing.is_set():
                n = next(numbers)
                results[n] = await stream(http, body(model, n, max_tokens), f"kill-{n}")

        async def kill_repeatedly(http: httpx.AsyncClient) -> None:
            for done in range(kills):
                # Each kill waits for the previous one's requests to finish: one
                # in flight at two deaths in a row would be suspected of causing them.
                await until(lambda: _served_since(http, done))  # noqa: B023 - awaited here
                pid = engine_pid(server)
                os.kill(pid, signal.SIGKILL)
                await until(lambda: _pid_changed(http, pid))  # noqa: B023
            await until(lambda: _served_since(http, kills))
            killing.set()

        limits = httpx.Limits(max_connections=clients + 4)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(kill_repeatedly, http)
            for _ in range(clients):
                tg.start_soon(client_loop, http)
        after = engine(server)

        # The same requests again, with no engine death, for the agreement.
        reference: dict[int, Streamed] = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            todo = iter(sorted(results))

            async def reference_loop() -> None:
                for n in todo:
                    reference[n] = await stream(http, body(model, n, max_tokens), f"ref-{n}")

            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(reference_loop)

    bad = {n: (r.status, r.finish_reason, r.error) for n, r in results.items() if not _whole(r)}
    assert not bad, list(bad.items())[:3]
    process = after["process"]
    assert process["restarts"] == kills
    assert process["last_exit"]["signal"] == "SIGKILL"
    assert process["resumed"] > 0
    assert process["poisoned"] == 0
    same = sum(results[n].text == reference[n].text for n in results)
    chars = sum(_common_prefix(results[n].text, reference[n].text) for n in results)
    total = sum(len(reference[n].text) for n in results)
    recoveries = after["recovery_seconds"]
    figures.update(
        requests=len(results),
        kills=kills,
        retried=process["retried"],
        resumed=process["resumed"],
        identical_answers=f"{same}/{len(results)}",
        agreeing_chars=f"{chars}/{total}",
        kill_to_token_p50_ms=round(percentile(recoveries, 50) * 1000, 1),
        kill_to_token_p95_ms=round(percentile(recoveries, 95) * 1000, 1),
    )
    # Batched decode can flip near-ties, so agreement need not be total; a
    # resumption that repeated or lost text would break nearly every answer.
    assert same >= 0.9 * len(results), figures


def _whole(result: Streamed) -> bool:
    return result.status == 200 and result.error is None and result.finish_reason == "length"


def _common_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


async def _served_since(http: httpx.AsyncClient, restarts: int) -> bool:
    """The engine that came up after ``restarts`` deaths has served a token."""
    found = (await http.get("/v1/supervisor", headers=ADMIN)).json().get("engine") or {}
    process = found.get("process") or {}
    served = len(found.get("recovery_seconds", [])) >= restarts and found.get("running", 0) > 0
    return served and process.get("suspects", 1) == 0


async def _pid_changed(http: httpx.AsyncClient, pid: int) -> bool:
    found = (await http.get("/v1/supervisor", headers=ADMIN)).json().get("engine") or {}
    now = (found.get("process") or {}).get("pid")
    return now is not None and now != pid


async def test_a_poison_request_is_failed_alone_and_the_rest_complete(
    model_dir: Path, tmp_path: Path, figures: dict[str, object]
) -> None:
    others, max_tokens = 8, 400  # long enough to be streaming when the poison arrives
    with running_server(model_dir, tmp_path, *DRILL_FLAGS) as server:
        model = model_name(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            reference: list[Streamed] = [Streamed() for _ in range(others)]
            got: list[Streamed] = [Streamed() for _ in range(others)]

            async def run(n: int, kind: str, into: list[Streamed]) -> None:
                await stream(http, body(model, n, max_tokens), f"{kind}-{n}", into=into[n])

            # The same batch with no death in it, for the agreement.
            async with anyio.create_task_group() as tg:
                for n in range(others):
                    tg.start_soon(run, n, "ref", reference)
            drill(server, {"kind": "engine_poison", "request_id": "poison-1"})
            async with anyio.create_task_group() as tg:
                for n in range(others):
                    tg.start_soon(run, n, "mate", got)
                # The poison joins a batch whose every request is streaming.
                await until(lambda: _all_streaming(got))
                poison = await stream(http, body(model, 99, 8), "poison-1")
            ready = await http.get("/health/ready")
        status = engine(server)
        alive = server.process.poll() is None

    assert poison.status == 500 and poison.error is not None, poison
    assert poison.error["request_id"] == "poison-1"
    assert "not retried" in poison.error["detail"]
    for mine in got:
        assert _whole(mine), (mine.status, mine.error)
    same = sum(mine.text == theirs.text for mine, theirs in zip(got, reference, strict=True))
    assert same >= others - 1, f"{same}/{others} answers agree with uninterrupted runs"
    process = status["process"]
    assert process["poisoned"] == 1
    assert process["resumed"] + process["retried"] >= others
    assert ready.status_code == 200 and alive
    figures.update(deaths=process["restarts"], identical_answers=f"{same}/{others}")


async def _all_streaming(got: list[Streamed]) -> bool:
    return all(result.first_token.is_set() for result in got)


async def test_a_stopped_engine_is_detected_as_hung_and_replaced(
    model_dir: Path, tmp_path: Path, figures: dict[str, object]
) -> None:
    hang_timeout = 2.0
    flags = (*DRILL_FLAGS, "--engine-hang-timeout", str(hang_timeout))
    with running_server(model_dir, tmp_path, *flags) as server:
        model = model_name(server)
        pid = engine_pid(server)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                answers: list[httpx.Response] = []

                async def ask(n: int) -> None:
                    request = {**body(model, n, 16), "stream": False}
                    answers.append(await http.post("/v1/chat/completions", json=request))

                async with anyio.create_task_group() as tg:
                    for n in range(4):
                        tg.start_soon(ask, n)
        finally:
            with contextlib.suppress(ProcessLookupError):  # never leave it stopped
                os.kill(pid, signal.SIGKILL)
        process = engine(server)["process"]
        shown = troupe_status(server)

    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all(a.json()["choices"][0]["message"]["content"] for a in answers)
    last = process["last_exit"]
    assert last["pid"] == pid and process["pid"] != pid
    assert "hung" in last["reason"] and "heartbeat" in last["reason"]
    detected = last["at"] - stopped_at
    # The watch counts from the last heartbeat, which came up to one interval before.
    assert hang_timeout - 0.5 <= detected <= hang_timeout + 2.0, detected
    assert process["retried"] >= 1
    assert f"engine process: pid {process['pid']}" in shown
    assert "1 restart;" in shown and "last exit: hung" in shown
    figures.update(detected_after_s=round(detected, 2), retried=process["retried"])


async def test_an_engine_loop_that_stops_stepping_is_replaced(
    model_dir: Path, tmp_path: Path
) -> None:
    flags = (*DRILL_FLAGS, "--engine-hang-timeout", "2")
    with running_server(model_dir, tmp_path, *flags) as server:
        model = model_name(server)
        drill(server, {"kind": "engine_hang", "after_tokens": 5})
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            answer = await stream(http, body(model, 1, 24), "hang-1")
        process = engine(server)["process"]
    assert _whole(answer), (answer.status, answer.error)
    assert "made no step" in process["last_exit"]["reason"]
    assert process["resumed"] == 1


def test_a_crash_loop_past_the_intensity_exits_non_zero_with_the_reason(
    model_dir: Path, tmp_path: Path
) -> None:
    flags = (
        *DRILL_FLAGS,
        *("--restart-intensity", "2", "--restart-period", "60", "--restart-backoff-max", "0.05"),
    )
    with running_server(model_dir, tmp_path, *flags) as server:
        drill(server, {"kind": "engine_exit_on_load", "times": 100})
        os.kill(engine_pid(server), signal.SIGKILL)
        code = server.process.wait(120)
        log = server.log()
    assert code == 1
    assert "gave up" in log and "engine" in log
    assert "while loading" in log
