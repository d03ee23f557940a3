"""What a generating request is held to: the endpoints' limits, and its one deadline."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from api.http.problems import HTTPProblem
from api.openai.request_types import SamplingFields


@dataclass(frozen=True)
class ServingLimits:
    """What the serving core needs from the server's settings: the endpoints' limits."""

    model_name: str
    """The default model's name (the one requests are reported under before they name one)."""
    max_body_bytes: int
    timeouts: Mapping[str, float]
    """Seconds each endpoint (``chat``, ``completions``, ``messages``, ...) may take."""
    max_tokens_limit: int | None = None
    """Most tokens a request may ask for; ``None``: the context length."""

    def check_max_tokens(self, body: SamplingFields) -> None:
        """422 if ``body`` asks for more tokens than ``max_tokens_limit``."""
        limit = self.max_tokens_limit
        if limit is None:
            return
        for field in ("max_completion_tokens", "max_tokens"):
            asked = getattr(body, field)
            if asked is not None and asked > limit:
                raise HTTPProblem(
                    422, "invalid-field", f"`{field}` is above this server's limit of {limit}"
                )


@dataclass(frozen=True)
class Deadline:
    """A request's one deadline, on both clocks it is checked against."""

    wall: float
    """Seconds since the epoch: for intake and the engine (possibly another process)."""
    loop: float
    """The event loop's clock (``anyio.current_time``): for the request's cancel scope."""

    @classmethod
    def after(cls, timeout: float) -> Deadline:
        """The deadline ``timeout`` seconds from now."""
        return cls(wall=time.time() + timeout, loop=anyio.current_time() + timeout)
