"""Load for the reliability tests: many streaming clients, each outcome classified.

Every request ends in exactly one :class:`Result` whose ``kind`` says how:
``completed`` (a finish reason and ``[DONE]``), ``error_event`` (a started
stream ended by an SSE error event), ``http_<status>`` (a problem response),
or a transport failure (``dropped``: the connection closed or reset under the
client; ``timeout``). A test then asserts on the kinds: nothing is dropped,
nothing times out.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

CLIENT_TIMEOUT = 120.0


@dataclass
class Result:
    """How one request ended, as its client saw it."""

    request_id: str
    status: int | None = None
    tokens: int = 0
    """Content deltas received."""
    finish_reason: str | None = None
    done: bool = False
    error: dict[str, Any] | None = None
    """The SSE error event's ``error`` object, or the problem body."""
    transport: str | None = None
    """``dropped`` or ``timeout`` when the connection failed under the client."""
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    ended: float | None = None

    @property
    def kind(self) -> str:
        """``completed``, ``error_event``, ``http_<status>``, ``dropped`` or ``timeout``."""
        if self.transport is not None:
            return self.transport
        if self.status != 200:
            return f"http_{self.status}"
        if self.error is not None:
            return "error_event"
        return "completed" if self.done and self.finish_reason else "incomplete"

    @property
    def latency(self) -> float:
        """Seconds from sending to the end of the response."""
        return (self.ended or time.monotonic()) - self.started


def chat_body(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """A streaming chat request that does a fixed amount of work."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        **extra,
    }


async def stream_chat(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    request_id: str,
    first_token: anyio.Event | None = None,
) -> Result:
    """Send one streaming chat completion and classify how it ended.

    ``first_token`` is set when the first content arrives.
    """
    result = Result(request_id=request_id)
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        ) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = json.loads(await response.aread())
            else:
                async for line in response.aiter_lines():
                    _take_line(result, line)
                    if first_token is not None and result.tokens:
                        first_token.set()
    except httpx.TimeoutException:
        result.transport = "timeout"
    except httpx.TransportError:
        result.transport = "dropped"
    result.ended = time.monotonic()
    return result


def _take_line(result: Result, line: str) -> None:
    if not line.startswith("data: "):
        return
    data = line[len("data: ") :]
    if data == "[DONE]":
        result.done = True
        return
    event = json.loads(data)
    if "error" in event:
        result.error = event["error"]
        return
    for choice in event.get("choices", []):
        if choice.get("delta", {}).get("content"):
            result.tokens += 1
            if result.first_token is None:
                result.first_token = time.monotonic()
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


async def run_clients(
    url: str,
    clients: int,
    requests: int,
    make_body: Callable[[int], dict[str, Any]],
    *,
    keep_going: Callable[[], bool] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``clients`` concurrent clients send ``requests`` requests in all, one at a time each.

    With ``keep_going``, clients also stop taking new requests once it says no.
    """
    results: list[Result] = []
    numbers = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(CLIENT_TIMEOUT)

    async def client_loop(http: httpx.AsyncClient) -> None:
        while True:
            n = next(numbers)
            if n >= requests or (keep_going is not None and not keep_going()):
                return
            result = await stream_chat(http, make_body(n), f"load-{n}")
            results.append(result)
            if on_result is not None:
                on_result(result)

    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http,
        anyio.create_task_group() as tg,
    ):
        for _ in range(clients):
            tg.start_soon(client_loop, http)
    return results


def kinds(results: list[Result]) -> Counter[str]:
    """How many requests ended each way."""
    return Counter(result.kind for result in results)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
