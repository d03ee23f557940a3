"""Intake as the HTTP side sees it: admit before tokenizing, release at the end, drain.

There is one intake: this client asks the actor of the running system, never
a stand-in, so the HTTP side has no second implementation to keep in step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio

from actors.intake.protocol import (
    Admit,
    Admitted,
    Ending,
    GetIntakeStats,
    IntakeStats,
    Rejected,
    Release,
    SetRateLimit,
    SetTenants,
    ShedReason,
    StartDraining,
    TenantPolicy,
    Tokenized,
)
from api.http.asgi import Request
from api.http.problems import HTTPProblem
from api.http.tenants import tenant_of
from runtime import ActorRef, ActorSystem, DeliveryError, TroupeError

ADMIT_TIMEOUT = 5.0
"""Seconds to wait for intake's answer; intake never waits on inference."""
DRAIN_POLL = 0.05
"""Seconds between two looks at intake's in-flight count while draining."""
STATS_TIMEOUT = 1.0
"""Seconds a drain waits for one answer of intake (a restarting intake is asked again)."""


@dataclass(frozen=True)
class Drained:
    """How a drain went: admitted requests in flight when it began, and still at its end."""

    before: int
    left: int


class IntakeClient:
    """Asks the intake actor; turns a rejection into 429 (or 503) with Retry-After."""

    def __init__(self) -> None:
        self._ref: ActorRef | None = None
        self._system: ActorSystem | None = None

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
        if self._ref is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        answer = await self._ref.ask(
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
                tenant=tenant_of(request) or "",
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

    def bind(self, system: ActorSystem | None) -> None:
        """Find the intake actor of the running system (``None``: the system stopped)."""
        self._system = system
        self._ref = None if system is None else system.ref("intake")

    def tokenized(self, request_id: str, prompt_tokens: int) -> None:
        """Replace intake's estimate with the exact prompt length (best effort)."""
        if self._ref is not None:
            with contextlib.suppress(DeliveryError):
                self._ref.tell_nowait(Tokenized(request_id=request_id, prompt_tokens=prompt_tokens))

    def release(self, request_id: str, ending: Ending) -> None:
        """Tell intake how the request ended (best effort: never fails the response)."""
        if self._ref is None:
            return
        with contextlib.suppress(DeliveryError):
            self._ref.tell_nowait(Release(request_id=request_id, outcome=ending))

    async def drain(self, timeout: float) -> Drained:
        """Have intake refuse new work (503) and wait up to ``timeout`` for what it admitted.

        Intake is the one place that knows whether the server drains and what is
        in flight; this tells it, and polls it while requests finish (an intake
        that is restarting or slow is asked again). With the actors gone (an
        escalation) there is nothing to wait for: requests in flight are
        answered 503 at once, and hypercorn waits for those answers.
        """
        before: int | None = None
        left = 0
        with anyio.move_on_after(timeout):
            while self._system is not None and self._system.running and self._ref is not None:
                ask = StartDraining() if before is None else GetIntakeStats()
                stats = await self._ask(ask)
                if stats is not None:
                    left = stats.in_flight
                    before = left if before is None else before
                    if not left:
                        break
                await anyio.sleep(DRAIN_POLL)
        return Drained(before or 0, left)

    async def set_rate_limit(self, rate: float, burst: int) -> bool:
        """Give intake a new rate limit; ``False`` if it did not take it (nothing changed)."""
        if self._ref is None:
            return False
        stats = await self._ask(SetRateLimit(rate_limit_per_second=rate, rate_limit_burst=burst))
        return stats is not None and (stats.rate_limit_per_second, stats.rate_limit_burst) == (
            rate,
            burst,
        )

    async def set_tenants(self, policy: TenantPolicy) -> IntakeStats | None:
        """Give intake new tenant limits; its statistics after, or ``None`` if it did not answer."""
        if self._ref is None:
            return None
        return await self._ask(SetTenants(policy=policy))

    async def stats(self) -> IntakeStats | None:
        """Intake's statistics, or ``None`` if it does not answer in time."""
        return None if self._ref is None else await self._ask(GetIntakeStats())

    async def _ask(
        self, message: StartDraining | GetIntakeStats | SetRateLimit | SetTenants
    ) -> IntakeStats | None:
        assert self._ref is not None
        with anyio.move_on_after(STATS_TIMEOUT), contextlib.suppress(TroupeError):
            return await self._ref.ask(message, timeout=STATS_TIMEOUT, expect=IntakeStats)
        return None


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
