"""Intake as the HTTP handlers see it: admit before tokenizing, release at the end."""

from __future__ import annotations

import contextlib
import hashlib
import time

from actors.intake.protocol import (
    Admit,
    Admitted,
    Outcome,
    Rejected,
    Release,
    ShedReason,
    Tokenized,
)
from api.http import Request
from api.problems import HTTPProblem
from runtime import ActorRef, ActorSystem, DeliveryError

ADMIT_TIMEOUT = 5.0
"""Seconds to wait for intake's answer; intake never waits on inference."""


class IntakeAdmission:
    """Asks the intake actor; turns a rejection into 429 (or 503) with Retry-After."""

    def __init__(self, timeouts: dict[str, float]) -> None:
        self._timeouts = timeouts
        self.ref: ActorRef | None = None

    async def admit(
        self, request: Request, endpoint: str, prompt_chars: int, messages: int = 1
    ) -> None:
        """Admit the request or raise the problem that refuses it."""
        if self.ref is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        answer = await self.ref.ask(
            Admit(
                request_id=request.request_id,
                client=client_key(request),
                endpoint=endpoint,
                prompt_chars=prompt_chars,
                messages=messages,
                deadline=time.time() + self._timeouts.get(endpoint, 600.0),
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
    """Who the rate limit counts against: a hash of the API key, else the address."""
    authorization = request.header("authorization")
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    client = request.scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"
