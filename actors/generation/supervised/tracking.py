"""What the generation actor keeps of each request across engine processes.

An engine process can die at any step; the generation actor
(:mod:`actors.generation.supervised.router`) outlives it. For every request it keeps the
request as submitted and the token ids delivered so far, so that the next
engine can resume it exactly where the client's stream stopped, and it sums
the counters of the engine processes that ended, so that the totals shown in
``/v1/supervisor`` and the metrics survive restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from actors.generation.engine.process_protocol import Heartbeat
from actors.generation.protocol import (
    EngineRequest,
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    Generate,
    prompt_length,
)


@dataclass
class TrackedRequest:
    """One request the generation actor holds until its end is delivered."""

    request: EngineRequest
    delivered: list[int] = field(default_factory=list)
    """Token ids delivered to the client so far."""
    engine: int | None = None
    """The pid of the engine process it runs on; ``None``: waiting for one."""
    deaths: int = 0
    """Engine deaths in a row it was in flight for."""
    cancelled: bool = False

    @property
    def request_id(self) -> str:
        """The id its events are posted under."""
        return self.request.request_id

    @property
    def fully_delivered(self) -> bool:
        """Every token it may generate was delivered: only its end is missing."""
        match self.request:
            case Generate(params=params):
                return len(self.delivered) >= params.max_tokens
            case _:
                return False  # an embedding's one event is its end

    def resubmission(self) -> EngineRequest:
        """The request for the next engine: the delivered tokens ride along to be prefilled."""
        if not self.delivered or not isinstance(self.request, Generate):
            return self.request
        # Its choice group (if any) has moved on: it is prefilled on its own.
        return msgspec.structs.replace(
            self.request, resumed=list(self.delivered), prefill_group=None
        )

    def finished(self, reason: FinishReason) -> Finished:
        """Its end, decided here rather than by an engine (a cancel, or only its end was lost)."""
        return Finished(
            request_id=self.request_id,
            reason=reason,
            prompt_tokens=prompt_length(self.request),
            completion_tokens=len(self.delivered),
        )

    def poisoned(self) -> Failed:
        """Its end when the engine died each time it ran: it is not tried again."""
        return Failed(
            request_id=self.request_id,
            kind=FailureKind.ENGINE_CRASHED,
            retryable=False,
            detail="the engine died each time this request ran; it was not retried",
            tokens_sent=len(self.delivered),
        )


@dataclass
class EngineTotals:
    """Counters over every engine process so far."""

    retried: int = 0
    resumed: int = 0
    poisoned: int = 0
    ups: int = 0
    dead: Heartbeat | None = None
    """The counters of the processes that ended, summed."""

    def fold(self, last: Heartbeat | None) -> None:
        """Add the last heartbeat of an engine process that ended."""
        if last is not None:
            self.dead = last if self.dead is None else add_counters(self.dead, last)

    def with_live(self, beat: Heartbeat | None) -> Heartbeat:
        """The counters of every process, the live one's last heartbeat included."""
        if self.dead is None:
            return beat or NO_COUNTERS
        return self.dead if beat is None else add_counters(self.dead, beat)


NO_COUNTERS = Heartbeat(
    steps=0,
    running=0,
    waiting=0,
    prompt_tokens=0,
    generated_tokens=0,
    cached_tokens=0,
    under_pressure=False,
)


def add_counters(before: Heartbeat, after: Heartbeat) -> Heartbeat:
    """Cumulative counters summed; gauges (running, waiting, pressure) from ``after``."""
    return Heartbeat(
        steps=before.steps + after.steps,
        running=after.running,
        waiting=after.waiting,
        prompt_tokens=before.prompt_tokens + after.prompt_tokens,
        generated_tokens=before.generated_tokens + after.generated_tokens,
        cached_tokens=before.cached_tokens + after.cached_tokens,
        under_pressure=after.under_pressure,
    )
