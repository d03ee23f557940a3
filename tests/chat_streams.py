"""A streamed chat completion as a test client reads it: text, tokens, usage, errors.

For the tests that cut a stream under a client (a replica or a rank killed)
and check that the client still got the whole answer, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx


@dataclass
class ChatStream:
    """What one streaming client received (ask for ``logprobs`` to count tokens)."""

    started_at: int = 10
    """Tokens after which :attr:`started` is set."""
    started: anyio.Event = field(default_factory=anyio.Event)
    replica: str = ""
    """The ``x-troupe-replica`` header, behind Ray Serve."""
    text: str = ""
    tokens: int = 0
    """Tokens received, counted by their log-probabilities (one each)."""
    usage: dict[str, int] | None = None
    finish: str | None = None
    errors: list[object] = field(default_factory=list)
    done: bool = False
    """``[DONE]`` arrived."""

    def take(self, event: dict[str, Any]) -> None:
        """One ``data:`` event of the stream."""
        if "error" in event:
            self.errors.append(event["error"])
            return
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event["choices"]:
            self.text += choice["delta"].get("content") or ""
            if choice.get("logprobs"):
                self.tokens += len(choice["logprobs"]["content"])
            self.finish = choice.get("finish_reason") or self.finish
        if self.tokens >= self.started_at:
            self.started.set()

    async def read(self, client: httpx.AsyncClient, url: str, body: dict[str, object]) -> None:
        """Stream ``body`` from ``url``'s chat completions into this record."""
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            self.replica = response.headers.get("x-troupe-replica", "")
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    self.take(json.loads(line.removeprefix("data: ")))
