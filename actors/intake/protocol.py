"""Messages of the intake actor: admission control in front of generation.

The HTTP layer, for each completion request:

1. asks ``Admit`` before tokenizing anything and gets ``Admitted`` or
   ``Rejected`` (HTTP 429, or 503 for ``draining``, with ``Retry-After``);
2. once admitted, may tell ``Tokenized`` with the real prompt size, which
   replaces the estimate made from characters;
3. tells ``Release`` exactly once when the request ends, whatever the outcome.

=====================  ==========================  =========
message                answer                      send with
=====================  ==========================  =========
``Admit``              ``Admitted``/``Rejected``   ask
``Tokenized``          none                        tell
``Release``            none                        tell
``GetIntakeStats``     ``IntakeStats``             ask
``StartDraining``      ``IntakeStats``             ask
``StopDraining``       ``IntakeStats``             ask
``SetTenants``         ``IntakeStats``             ask
``CrashIntake``        the actor crashes           ask/tell
=====================  ==========================  =========

Deadlines: ``Admit.deadline`` is wall-clock time (seconds since the epoch).
Intake does not refuse a request whose deadline has passed: the HTTP layer
checks that before admitting (it answers 504, which is not a shed), and the
generation engine drops admitted requests whose deadline passes before
prefill. Intake uses the deadline only to reclaim an admitted request whose
``Release`` never came (see ``IntakeSettings.reclaim_after``), and counts
``cancelled_deadline`` releases.
"""

from __future__ import annotations

import enum

import msgspec

from runtime.messages import Message


class ShedReason(enum.StrEnum):
    """Why a request was turned away, in the order the checks run."""

    DRAINING = "draining"
    """The server is shutting down (HTTP 503)."""
    PRESSURE = "pressure"
    """Memory is above the high-water mark."""
    RATE_LIMITED = "rate_limited"
    """The client's token bucket is empty."""
    QUEUE_FULL = "queue_full"
    """As many requests are in flight as ``queue_max_requests`` allows."""
    TOKENS_FULL = "tokens_full"
    """This prompt would take the in-flight prompt tokens past ``queue_max_prompt_tokens``."""
    MEMORY_FULL = "memory_full"
    """This request's KV cache would not fit what the memory budget has left."""
    TENANT_CONCURRENCY = "tenant_concurrency"
    """Its tenant has as many requests in flight as its ``max_concurrent`` allows."""
    TENANT_TOKENS = "tenant_tokens"
    """Its tenant's ``tokens_per_minute`` are spent."""


class Ending(enum.StrEnum):
    """How an admitted request ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED_DISCONNECT = "cancelled_disconnect"
    """The client went away."""
    CANCELLED_DEADLINE = "cancelled_deadline"
    """The request's deadline passed before it finished."""


class Admit(Message, frozen=True, kw_only=True):
    """May this request go on to tokenization and generation?"""

    request_id: str
    client: str
    """Whom the rate limit charges: an API-key hash or the client's address."""
    endpoint: str
    """The API endpoint (``chat``, ``completions``, ``messages``, ...); kept with the booking."""
    prompt_chars: int
    """Characters of the prompt (all message texts together)."""
    deadline: float | None = None
    """Wall-clock time (seconds since the epoch) by which the request ends."""
    messages: int = 1
    """Chat messages in the prompt (1 for a text completion); adds template overhead."""
    max_tokens: int = 0
    """Completion tokens the request may generate, over all its choices."""
    choices: int = 1
    """Sequences the prompt is generated for (``n``); each holds the prompt's KV cache."""
    model: str = ""
    """The served model it is for ("" with a single model): its KV bytes per token apply."""
    tenant: str = ""
    """Whose request it is (a team's name, or a key's own tenant); "": no keys."""


class Admitted(Message, frozen=True, kw_only=True):
    """Go ahead; call ``Release`` when the request ends."""

    request_id: str
    position: int
    """Requests in flight, this one included."""
    prompt_tokens: int
    """The prompt-size estimate charged against the token budget."""


class Rejected(Message, frozen=True, kw_only=True):
    """Turned away; nothing to release."""

    request_id: str
    reason: ShedReason
    retry_after: int
    """Whole seconds, at least 1, for the ``Retry-After`` header."""
    detail: str
    """For people; never carries client keys or prompt text."""


class Tokenized(Message, frozen=True, kw_only=True):
    """The real prompt size of an admitted request, replacing the estimate."""

    request_id: str
    prompt_tokens: int


class Release(Message, frozen=True, kw_only=True):
    """An admitted request has ended; its capacity is free again."""

    request_id: str
    outcome: Ending


class GetIntakeStats(Message, frozen=True, kw_only=True):
    """Ask for intake's counters."""


class StartDraining(Message, frozen=True, kw_only=True):
    """Turn every new ``Admit`` away with ``draining``; answered with ``IntakeStats``.

    Poll ``GetIntakeStats`` until ``in_flight`` is 0 to wait for the drain.
    """


class StopDraining(Message, frozen=True, kw_only=True):
    """Admit again (a drain that was called off); answered with ``IntakeStats``."""


class ReportPressure(Message, frozen=True, kw_only=True):
    """Memory pressure changed where intake cannot read it (the engine process)."""

    under_pressure: bool


class ReportMemory(Message, frozen=True, kw_only=True):
    """The engine's memory figures, for memory-aware admission (sent when they change)."""

    kv_bytes_per_token: int
    """KV cache bytes per token of the served model."""
    model_bytes: int
    """Bytes the weights and the prefix cache take now."""
    model: str = ""
    """Which served model ("" with a single model)."""


class SetRateLimit(Message, frozen=True, kw_only=True):
    """Change the per-client rate limit at run time; answered with ``IntakeStats``.

    The change lives in intake's durable state, so it outlives a restart of the
    actor (not of the server: it is not written anywhere).
    """

    rate_limit_per_second: float
    """Requests per second per client; 0 turns the limit off."""
    rate_limit_burst: int
    """Requests a client may send at once above the steady rate (at least 1)."""


class CrashIntake(Message, frozen=True, kw_only=True):
    """Make the intake actor's handler raise (drills and tests); its state survives."""


class TenantLimits(Message, frozen=True, kw_only=True):
    """One tenant's limits (the tenants file's table for it, or its ``[default]``)."""

    weight: float = 1.0
    """Its share of the engine while tenants wait, relative to the others' weights."""
    max_concurrent: int | None = None
    """Requests in flight at once, at most; ``None``: only the server's limits."""
    tokens_per_minute: int | None = None
    """Tokens (prompt and ``max_tokens``) admitted per minute, at most; ``None``: no quota."""


class TenantPolicy(Message, frozen=True, kw_only=True):
    """Every tenant's limits: named tenants', and the default for all others."""

    tenants: dict[str, TenantLimits] = msgspec.field(default_factory=dict)
    default: TenantLimits = msgspec.field(default_factory=TenantLimits)


class SetTenants(Message, frozen=True, kw_only=True):
    """New tenant limits, at run time (the console's edit of the tenants file)."""

    policy: TenantPolicy


class TenantStats(Message, frozen=True, kw_only=True):
    """One tenant's admission counters and limits."""

    tenant: str
    in_flight: int
    admitted_total: int
    shed_total: int
    shed: dict[str, int]
    """Requests shed, by reason (any reason: the tenant's limits and the server's)."""
    weight: float
    max_concurrent: int | None
    tokens_per_minute: int | None


class IntakeStats(Message, frozen=True, kw_only=True):
    """Intake's counters; totals count since the state was created, across restarts."""

    draining: bool
    under_pressure: bool
    """The memory-pressure flag as intake read it just now."""
    in_flight: int
    in_flight_prompt_tokens: int
    """Estimates, or real sizes once ``Tokenized``, of the requests in flight."""
    queue_max_requests: int
    queue_max_prompt_tokens: int
    admitted_total: int
    completed_total: int
    failed_total: int
    cancelled_disconnect_total: int
    cancelled_deadline_total: int
    shed_draining: int
    shed_pressure: int
    shed_rate_limited: int
    shed_queue_full: int
    shed_tokens_full: int
    shed_memory_full: int = 0
    kv_tokens_booked: int = 0
    """KV tokens (choices x prompt, plus max_tokens) of the requests in flight."""
    memory_left_bytes: int | None = None
    """Bytes the memory budget has left for KV caches; ``None``: not checked (yet)."""
    reclaimed_total: int
    """Admitted requests dropped from the books because no ``Release`` came in time."""
    unknown_releases: int
    """Releases of requests not in flight (duplicates, or already reclaimed)."""
    drain_rate: float | None
    """Requests released per second of busy time; ``None`` before the first release."""
    client_buckets: int
    """Clients with a token bucket now (at most ``IntakeSettings.max_clients``)."""
    rate_limit_per_second: float = 0.0
    """The per-client rate limit in force (0: off); it can change at run time."""
    rate_limit_burst: int = 1
    """The burst in force with it."""
    shed_tenant_concurrency: int = 0
    shed_tenant_tokens: int = 0
    tenants: list[TenantStats] = msgspec.field(default_factory=list)
    """The busiest tenants' counters (bounded); empty on a server without keys."""
