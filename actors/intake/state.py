"""Intake's state: requests in flight, counters, client buckets, the drain rate.

It lives in an :class:`IntakeState` built once by the composition root and
shared by every incarnation of the intake actor, like the kv-cache actor's
``PrefixCache``: a restart of intake must not forget what is in flight, or the
limits would admit too much (or, had releases been lost, too little) until the
queue turned over. The checks :meth:`IntakeState.admit` runs, in order, are
listed in :mod:`actors.intake.actor`.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from actors.intake.limits import (
    ClientBuckets,
    DrainRate,
    backlog_retry_after,
    ceil_seconds,
    estimate_prompt_tokens,
)
from actors.intake.memory import MemoryBook, kv_tokens
from actors.intake.protocol import (
    Admit,
    Admitted,
    Ending,
    IntakeStats,
    Rejected,
    ShedReason,
    TenantPolicy,
)
from actors.intake.settings import IntakeSettings
from actors.intake.tenants import TenantBook, check_limits

log = logging.getLogger("troupe.intake")


@dataclass
class _InFlight:
    request_id: str
    endpoint: str
    prompt_tokens: int
    deadline: float | None
    max_tokens: int = 0
    choices: int = 1
    model: str = ""
    tenant: str = ""

    @property
    def kv_tokens(self) -> int:
        return kv_tokens(self.prompt_tokens, self.max_tokens, self.choices)


class IntakeState:
    """Everything intake knows, built by the composition root to outlive restarts.

    Times passed in are the actor system clock's: ``now`` monotonic seconds,
    ``wall`` seconds since the epoch (for deadlines).

    Requests are booked under an admission number rather than their id, which
    clients may choose (``X-Request-ID``) and so may collide: two requests with
    the same id are two bookings, and a ``Release`` or ``Tokenized`` applies to
    the oldest of them.
    """

    def __init__(self, settings: IntakeSettings | None = None) -> None:
        self.settings = settings or IntakeSettings()
        s = self.settings
        self.buckets = ClientBuckets(s.rate_limit_per_second, s.rate_limit_burst, s.max_clients)
        self.drain = DrainRate(s.drain_time_constant)
        self.draining = False
        self.tenants = TenantBook(s.tenants)
        self._entries: dict[int, _InFlight] = {}
        self._by_request: dict[str, list[int]] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, number)
        self._numbers = itertools.count()
        self._prompt_tokens = 0
        self.memory = MemoryBook(s.memory_budget)
        self.admitted_total = 0
        self.outcomes: Counter[Ending] = Counter()
        self.shed: Counter[ShedReason] = Counter()
        self.reclaimed_total = 0
        self.unknown_releases = 0

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return len(self._entries)

    @property
    def in_flight_prompt_tokens(self) -> int:
        """Prompt tokens of the requests in flight."""
        return self._prompt_tokens

    def admit(
        self, request: Admit, *, now: float, wall: float, pressure: Callable[[], bool]
    ) -> Admitted | Rejected:
        """Run the checks in order; book the request if every one passes."""
        self.reclaim(now=now, wall=wall)
        if self.draining:
            return self._reject(request, ShedReason.DRAINING, "the server is shutting down", now)
        if pressure():
            return self._reject(request, ShedReason.PRESSURE, "memory is under pressure", now)
        wait = self.buckets.take(request.client, now)
        if wait > 0:
            detail = (
                f"more than {self.buckets.rate:g} requests/s"
                f" (burst {self.buckets.burst}) from this client"
            )
            return self._reject(request, ShedReason.RATE_LIMITED, detail, now, ceil_seconds(wait))
        tokens = estimate_prompt_tokens(request.prompt_chars, request.messages)
        kv = kv_tokens(tokens, request.max_tokens, request.choices)
        if limited := self.tenants.refusal(request.tenant, kv, now):
            return self._reject(request, limited.reason, limited.detail, now, limited.retry_after)
        if refused := self._over_capacity(request, tokens, now):
            return refused
        self._book(request, tokens, now)
        return Admitted(
            request_id=request.request_id, position=self.in_flight, prompt_tokens=tokens
        )

    def _over_capacity(self, request: Admit, tokens: int, now: float) -> Rejected | None:
        """The queue's limits: requests, prompt tokens, then KV cache memory."""
        limits = self.settings
        if self.in_flight >= limits.queue_max_requests:
            detail = f"{self.in_flight} requests in flight (limit {limits.queue_max_requests})"
            return self._reject(request, ShedReason.QUEUE_FULL, detail, now)
        if self.in_flight and self._prompt_tokens + tokens > limits.queue_max_prompt_tokens:
            detail = (
                f"{self._prompt_tokens} prompt tokens in flight and about {tokens} more"
                f" would pass the limit of {limits.queue_max_prompt_tokens}"
            )
            return self._reject(request, ShedReason.TOKENS_FULL, detail, now)
        kv = kv_tokens(tokens, request.max_tokens, request.choices)
        if memory := self.memory.refusal(request.model, kv, self.in_flight):
            return self._reject(request, ShedReason.MEMORY_FULL, memory, now)
        return None

    def tokenized(self, request_id: str, prompt_tokens: int) -> bool:
        """Replace a request's estimate with its real size; ``False`` if it is not in flight."""
        numbers = self._by_request.get(request_id)
        if not numbers:
            return False
        entry = self._entries[numbers[0]]
        real = max(0, prompt_tokens)
        self._prompt_tokens += real - entry.prompt_tokens
        self.memory.book(entry.model, -entry.kv_tokens)
        entry.prompt_tokens = real
        self.memory.book(entry.model, entry.kv_tokens)
        return True

    def release(self, request_id: str, outcome: Ending, *, now: float) -> bool:
        """Free a request's capacity and count its outcome; ``False`` if it was not in flight."""
        numbers = self._by_request.get(request_id)
        if not numbers:
            self.unknown_releases += 1
            return False
        self._unbook(numbers[0], now)
        self.outcomes[outcome] += 1
        # Every release frees a slot, whatever its outcome, so all count as drain.
        self.drain.observe(now)
        return True

    def reclaim(self, *, now: float, wall: float) -> int:
        """Drop requests whose deadline passed ``reclaim_after`` seconds ago; return how many."""
        cutoff = wall - self.settings.reclaim_after
        reclaimed = 0
        while self._deadlines and self._deadlines[0][0] < cutoff:
            _, number = heapq.heappop(self._deadlines)
            if number in self._entries:  # else released already: the heap is pruned lazily
                self._unbook(number, now)
                reclaimed += 1
        if reclaimed:
            self.reclaimed_total += reclaimed
            log.warning("intake reclaimed %d requests that were never released", reclaimed)
        return reclaimed

    def set_rate_limit(self, rate: float, burst: int, *, now: float) -> None:
        """Change the per-client rate limit from ``now`` on (checked as at start-up)."""
        settings = dataclasses.replace(
            self.settings, rate_limit_per_second=rate, rate_limit_burst=burst
        )  # raises ValueError, leaving everything as it was, for a value start-up refuses
        self.buckets.reconfigure(rate, burst, now)
        self.settings = settings
        log.info("intake rate limit now %g/s, burst %d", rate, burst)

    def set_tenants(self, policy: TenantPolicy, *, now: float) -> None:
        """New per-tenant limits from ``now`` on (checked as at start-up)."""
        for limits in (policy.default, *policy.tenants.values()):
            check_limits(limits)  # raises ValueError, leaving everything as it was
        self.tenants.reconfigure(policy, now)
        self.settings = dataclasses.replace(self.settings, tenants=policy)
        log.info("intake tenant limits now cover %d named tenants", len(policy.tenants))

    def retry_after(self, now: float) -> int:
        """``Retry-After`` for shedding caused by the backlog, from the measured drain rate."""
        s = self.settings
        return backlog_retry_after(
            self.in_flight,
            self.drain.rate(now),
            floor=s.drain_rate_floor,
            default=s.retry_after_default,
            maximum=s.retry_after_max,
        )

    def stats(self, *, now: float, wall: float, under_pressure: bool) -> IntakeStats:
        """A snapshot of the counters (reclaiming overdue requests first)."""
        self.reclaim(now=now, wall=wall)
        return IntakeStats(
            draining=self.draining,
            under_pressure=under_pressure,
            in_flight=self.in_flight,
            in_flight_prompt_tokens=self._prompt_tokens,
            queue_max_requests=self.settings.queue_max_requests,
            queue_max_prompt_tokens=self.settings.queue_max_prompt_tokens,
            admitted_total=self.admitted_total,
            completed_total=self.outcomes[Ending.COMPLETED],
            failed_total=self.outcomes[Ending.FAILED],
            cancelled_disconnect_total=self.outcomes[Ending.CANCELLED_DISCONNECT],
            cancelled_deadline_total=self.outcomes[Ending.CANCELLED_DEADLINE],
            shed_draining=self.shed[ShedReason.DRAINING],
            shed_pressure=self.shed[ShedReason.PRESSURE],
            shed_rate_limited=self.shed[ShedReason.RATE_LIMITED],
            shed_queue_full=self.shed[ShedReason.QUEUE_FULL],
            shed_tokens_full=self.shed[ShedReason.TOKENS_FULL],
            shed_memory_full=self.shed[ShedReason.MEMORY_FULL],
            kv_tokens_booked=self.memory.booked_tokens,
            memory_left_bytes=self.memory.left,
            reclaimed_total=self.reclaimed_total,
            unknown_releases=self.unknown_releases,
            drain_rate=self.drain.rate(now),
            client_buckets=len(self.buckets),
            rate_limit_per_second=self.settings.rate_limit_per_second,
            rate_limit_burst=self.settings.rate_limit_burst,
            shed_tenant_concurrency=self.shed[ShedReason.TENANT_CONCURRENCY],
            shed_tenant_tokens=self.shed[ShedReason.TENANT_TOKENS],
            tenants=self.tenants.stats(),
        )

    def _reject(
        self,
        request: Admit,
        reason: ShedReason,
        detail: str,
        now: float,
        retry_after: int | None = None,
    ) -> Rejected:
        self.shed[reason] += 1
        self.tenants.shed(request.tenant, reason, now)
        return Rejected(
            request_id=request.request_id,
            reason=reason,
            retry_after=self.retry_after(now) if retry_after is None else retry_after,
            detail=detail,
        )

    def _book(self, request: Admit, tokens: int, now: float) -> None:
        number = next(self._numbers)
        entry = _InFlight(
            request.request_id,
            request.endpoint,
            tokens,
            request.deadline,
            request.max_tokens,
            request.choices,
            request.model,
            request.tenant,
        )
        self._entries[number] = entry
        self.tenants.book(entry.tenant, entry.kv_tokens, now)
        self.memory.book(entry.model, entry.kv_tokens)
        self._by_request.setdefault(request.request_id, []).append(number)
        if request.deadline is not None and math.isfinite(request.deadline):
            # NaN would break the heap's order and hide overdue requests behind it.
            heapq.heappush(self._deadlines, (request.deadline, number))
            self._compact_deadlines()
        self._prompt_tokens += tokens
        self.admitted_total += 1
        self.drain.busy(now)

    def _compact_deadlines(self) -> None:
        # Released requests stay in the heap until their deadline comes up, which
        # for long timeouts at a high request rate would be most of it: rebuild
        # once the dead entries outnumber the live ones (amortized O(1) a booking).
        if len(self._deadlines) > 2 * len(self._entries) + 64:
            self._deadlines = [item for item in self._deadlines if item[1] in self._entries]
            heapq.heapify(self._deadlines)

    def _unbook(self, number: int, now: float) -> None:
        entry = self._entries.pop(number)
        numbers = self._by_request[entry.request_id]
        numbers.remove(number)
        if not numbers:
            del self._by_request[entry.request_id]
        self._prompt_tokens -= entry.prompt_tokens
        self.memory.book(entry.model, -entry.kv_tokens)
        self.tenants.release(entry.tenant)
        if not self._entries:
            self.drain.idle(now)
