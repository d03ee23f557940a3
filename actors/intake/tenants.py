"""Per-tenant limits at admission: requests in flight and tokens per minute.

A tenant (a team of API keys, or one key; see :mod:`api.http.tenants`) may
have its own limits, from the tenants file, and every other tenant takes the
file's ``[default]`` ones. A request past its tenant's limit is shed with 429
and a ``Retry-After`` of its own, whatever room the server has: one tenant's
burst never becomes everyone's queue. Which of the admitted requests runs
first is the engine's fair queue's business
(:mod:`actors.generation.engine.fair_queue`); the tenant's ``weight`` travels
with each of its requests.

The tokens a request is charged are the KV positions it may hold, its prompt
(estimated from its characters) plus its ``max_tokens``, the same measure the
memory check books. Keyless servers have one tenant, ``""``, with no limits.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from actors.intake.limits import TokenBucket, ceil_seconds
from actors.intake.protocol import ShedReason, TenantLimits, TenantPolicy, TenantStats

MAX_REPORTED = 64
"""Tenants listed in intake's statistics at most (the busiest first): a bounded answer."""


@dataclass
class _Tenant:
    limits: TenantLimits
    in_flight: int = 0
    admitted: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    bucket: TokenBucket | None = None


@dataclass(frozen=True)
class TenantRefusal:
    """Why a tenant's request is shed, and when to come back."""

    reason: ShedReason
    detail: str
    retry_after: int | None
    """Seconds; ``None``: intake's backlog estimate."""


class TenantBook:
    """Every tenant's requests in flight and token bucket."""

    def __init__(self, policy: TenantPolicy | None = None) -> None:
        self.policy = policy or TenantPolicy()
        self._tenants: dict[str, _Tenant] = {}

    def limits_of(self, tenant: str) -> TenantLimits:
        """The limits that apply to ``tenant``."""
        return self.policy.tenants.get(tenant, self.policy.default)

    def refusal(self, tenant: str, kv_tokens: int, now: float) -> TenantRefusal | None:
        """Whether ``tenant``'s request of ``kv_tokens`` is over a limit (nothing is charged)."""
        if not tenant:
            return None
        state = self._state(tenant, now)
        limits = state.limits
        if limits.max_concurrent is not None and state.in_flight >= limits.max_concurrent:
            detail = (
                f"this tenant has {state.in_flight} requests in flight"
                f" (its limit is {limits.max_concurrent})"
            )
            return TenantRefusal(ShedReason.TENANT_CONCURRENCY, detail, None)
        if state.bucket is not None:
            need = min(float(kv_tokens), float(state.bucket.burst))
            available = state.bucket.tokens(now)
            if available < need:
                wait = (need - available) / state.bucket.rate
                detail = (
                    f"this tenant's {limits.tokens_per_minute} tokens per minute are spent"
                    " (prompt and max_tokens count)"
                )
                return TenantRefusal(ShedReason.TENANT_TOKENS, detail, ceil_seconds(wait))
        return None

    def book(self, tenant: str, kv_tokens: int, now: float) -> None:
        """Charge an admitted request to ``tenant``."""
        if not tenant:
            return
        state = self._state(tenant, now)
        state.in_flight += 1
        state.admitted += 1
        if state.bucket is not None:
            available = state.bucket.tokens(now)
            state.bucket.take_many(min(float(kv_tokens), available), now)

    def release(self, tenant: str) -> None:
        """One of ``tenant``'s requests ended."""
        state = self._tenants.get(tenant)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def shed(self, tenant: str, reason: ShedReason, now: float) -> None:
        """Count a request of ``tenant`` turned away, for whatever reason."""
        if tenant:
            self._state(tenant, now).shed[reason.value] += 1

    def reconfigure(self, policy: TenantPolicy, now: float) -> None:
        """New limits, at run time: counts are kept, buckets follow the new quotas."""
        self.policy = policy
        for name, state in self._tenants.items():
            state.limits = self.limits_of(name)
            state.bucket = _rebucket(state.bucket, state.limits, now)

    def stats(self) -> list[TenantStats]:
        """The busiest tenants' counters (at most :data:`MAX_REPORTED`)."""
        busiest = sorted(
            self._tenants.items(),
            key=lambda item: (-item[1].in_flight, -item[1].admitted, item[0]),
        )[:MAX_REPORTED]
        return [
            TenantStats(
                tenant=name,
                in_flight=state.in_flight,
                admitted_total=state.admitted,
                shed_total=sum(state.shed.values()),
                shed=dict(state.shed),
                weight=state.limits.weight,
                max_concurrent=state.limits.max_concurrent,
                tokens_per_minute=state.limits.tokens_per_minute,
            )
            for name, state in busiest
        ]

    def _state(self, tenant: str, now: float) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            limits = self.limits_of(tenant)
            state = self._tenants[tenant] = _Tenant(limits, bucket=_rebucket(None, limits, now))
        return state


def _rebucket(bucket: TokenBucket | None, limits: TenantLimits, now: float) -> TokenBucket | None:
    """The token bucket ``limits`` ask for: kept (reconfigured), new, or none."""
    per_minute = limits.tokens_per_minute
    if per_minute is None:
        return None
    rate, burst = per_minute / 60.0, max(1, per_minute)
    if bucket is None:
        return TokenBucket(rate, burst, now)
    bucket.reconfigure(rate, burst, now)
    return bucket


def check_limits(limits: TenantLimits) -> None:
    """Raise ``ValueError`` for limits that cannot be enforced."""
    if not (limits.weight > 0 and math.isfinite(limits.weight)):
        raise ValueError("a tenant's weight must be a positive number")
    if limits.max_concurrent is not None and limits.max_concurrent < 1:
        raise ValueError("a tenant's max_concurrent must be at least 1")
    if limits.tokens_per_minute is not None and limits.tokens_per_minute < 1:
        raise ValueError("a tenant's tokens_per_minute must be at least 1")
