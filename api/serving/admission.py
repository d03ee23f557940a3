"""Intake as the HTTP handlers see it: admit before tokenizing, release at the end."""

from __future__ import annotations

import contextlib
from typing import Protocol

from actors.intake.protocol import (
    Admit,
    Admitted,
    Outcome,
    Rejected,
    Release,
    ShedReason,
    Tokenized,
)
from api.http.asgi import Request
from api.http.problems import HTTPProblem
from runtime import ActorRef, ActorSystem, DeliveryError

ADMIT_TIMEOUT = 5.0
"""Seconds to wait for intake's answer; intake never waits on inference."""


class Admission(Protocol):
    """Intake, as the completion handlers see it."""

    async def admit(
        self,
        request: Request,
        endpoint: str,
        prompt_chars: int,
        messages: int,
        deadline: float,
        *,
        max_tokens: int = 0,
        choices: int = 1,
        model: str = "",
    ) -> None:
        """Admit the request or raise the ``HTTPProblem`` (429, 503) that refuses it.

        ``deadline`` is the request's, in seconds since the epoch; ``max_tokens``
        the completion tokens it may generate over its ``choices`` (its KV cache);
        ``model`` the served model it is for ("" with a single model).
        """
        ...

    def tokenized(self, request_id: str, prompt_tokens: int) -> None:
        """Replace intake's estimate with the exact prompt length."""
        ...

    def release(self, request_id: str, outcome: str) -> None:
        """Tell intake how an admitted request ended."""
        ...

    def bind(self, system: ActorSystem) -> None:
        """Find intake in the running system."""
        ...


class IntakeAdmission:
    """Asks the intake actor; turns a rejection into 429 (or 503) with Retry-After."""

    def __init__(self) -> None:
        self.ref: ActorRef | None = None

    async def admit(
        self,
        request: Request,
        endpoint: str,
        prompt_chars: int,
        messages: int,
        deadline: float,
        *,
        max_tokens: int = 0,
        choices: int = 1,
        model: str = "",
    ) -> None:
        """Admit the request (due by ``deadline``, epoch seconds) or raise what refuses it."""
        if self.ref is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        answer = await self.ref.ask(
            Admit(
                request_id=request.request_id,
                client=client_key(request),
                endpoint=endpoint,
                prompt_chars=prompt_chars,
                messages=messages,
                deadline=deadline,
                max_tokens=max_tokens,
                model=model,
                choices=choices,
            ),
            timeout=ADMIT_TIMEOUT,
        )
        if isinstance(answer, Admitted):
            return
        assert isinstance(answer, Rejected)
        status = 503 if answer.reason is ShedReason.DRAINING else 429
        raise HTTPProblem(
            status,
            answer.reason.value.replace("_", "-"),
            answer.detail,
            (("retry-after", str(answer.retry_after)),),
        )

    def bind(self, system: ActorSystem) -> None:
        """Find the intake actor of the running system."""
        self.ref = system.ref("intake")

    def tokenized(self, request_id: str, prompt_tokens: int) -> None:
        """Replace intake's estimate with the exact prompt length (best effort)."""
        if self.ref is not None:
            with contextlib.suppress(DeliveryError):
                self.ref.tell_nowait(Tokenized(request_id=request_id, prompt_tokens=prompt_tokens))

    def release(self, request_id: str, outcome: str) -> None:
        """Tell intake how the request ended (best effort: never fails the response)."""
        if self.ref is None:
            return
        with contextlib.suppress(DeliveryError):
            self.ref.tell_nowait(Release(request_id=request_id, outcome=Outcome(outcome)))


def client_key(request: Request) -> str:
    """Who the rate limit counts against: the API key that authenticated it, else the address.

    Without API keys nothing vouches for an ``Authorization`` header, so any
    value a client makes up would buy it a fresh bucket: the address counts.
    """
    key = request.scope.get("state", {}).get("api_key")
    if key:
        return f"key:{key}"
    client = request.scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"
