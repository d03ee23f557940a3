"""Intake's limits, checked when they are built (imported by the api's settings too)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from actors.intake.limits import (
    DEFAULT_RETRY_AFTER,
    DRAIN_RATE_FLOOR,
    DRAIN_TIME_CONSTANT,
    MAX_RETRY_AFTER,
)
from actors.intake.protocol import TenantPolicy


@dataclass(frozen=True)
class IntakeSettings:
    """Limits of the intake queue; defaults match ``troupe serve``'s settings."""

    queue_max_requests: int = 256
    """Requests admitted and not yet released, at most."""
    queue_max_prompt_tokens: int = 262_144
    """Prompt tokens (estimated, then real) admitted and not yet released, at most."""
    rate_limit_per_second: float = 0.0
    """Requests per second per client; 0 turns the rate limit off."""
    rate_limit_burst: int = 20
    """Requests a client may send at once above the steady rate."""
    max_clients: int = 10_000
    """Client token buckets kept at most; the least recently used is forgotten."""
    drain_time_constant: float = DRAIN_TIME_CONSTANT
    """Seconds of busy time over which the drain-rate estimate forgets."""
    drain_rate_floor: float = DRAIN_RATE_FLOOR
    """Releases per second assumed at least when deriving ``Retry-After``."""
    retry_after_default: int = DEFAULT_RETRY_AFTER
    """``Retry-After`` seconds while no drain rate has been measured."""
    retry_after_max: int = MAX_RETRY_AFTER
    """Longest ``Retry-After`` suggested, seconds."""
    memory_budget: int | None = None
    """Bytes for the weights, the prefix cache and every admitted request's KV cache;
    ``None``: admission does not check memory."""
    tenants: TenantPolicy = field(default_factory=TenantPolicy)
    """Per-tenant limits (:mod:`actors.intake.tenants`); they can change at run time."""
    reclaim_after: float = 60.0
    """Seconds past an admitted request's deadline after which it is dropped from the
    books if its ``Release`` never came (a lost tell, or an asker that gave up just
    as it was admitted). The HTTP layer cuts requests off at their deadline, so a
    release is normally seconds away; requests without a deadline are never reclaimed."""

    def __post_init__(self) -> None:
        # Checked here, not only where they are used, so bad configuration stops
        # the server at start-up rather than when the composition root builds state.
        if min(self.queue_max_requests, self.queue_max_prompt_tokens, self.max_clients) < 1:
            raise ValueError("queue limits and max_clients must be at least 1")
        if not 0 <= self.rate_limit_per_second < math.inf or self.rate_limit_burst < 1:
            raise ValueError("need a finite rate limit >= 0 (0: off) and a burst >= 1")
        if not (0 < self.drain_time_constant < math.inf and 0 < self.drain_rate_floor < math.inf):
            raise ValueError("the drain-rate time constant and floor must be positive")
        if not 1 <= self.retry_after_default <= self.retry_after_max:
            raise ValueError("need 1 <= retry_after_default <= retry_after_max")
        if not self.reclaim_after >= 0:
            raise ValueError("reclaim_after must not be negative")
