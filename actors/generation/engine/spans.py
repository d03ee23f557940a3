"""The engine's part of a request's trace: queue, prefill and decode spans.

A request that arrives with a W3C ``traceparent`` (``Generate.traceparent``,
set only while tracing is on) is timed on the engine thread: when it was
sent, when it entered the batch, when its first token came and when it ended.
The spans are recorded once it ends, with those times, as children of the
HTTP request's span, so one trace shows the whole request across the process
boundary. They carry counts and ids, never text.

Runs on the engine thread (no anyio); recording goes to whatever tracer
provider this process installed (:func:`actors.telemetry.start_tracing`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
TRACER_NAME = "mlx_troupe.engine"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass
class EngineTrace:
    """One request's times on the engine, in wall-clock seconds (its sender may be elsewhere)."""

    traceparent: str
    submitted_at: float | None
    """When the request was sent to the engine (``Generate.submitted_at``)."""
    started_at: float
    """When it entered the batch: its prefill begins."""
    first_token_at: float | None = None

    @classmethod
    def begin(cls, traceparent: str | None, submitted_at: float | None) -> EngineTrace | None:
        """Start timing a request that is traced; ``None`` for one that is not."""
        if not traceparent:
            return None
        return cls(traceparent, submitted_at, time.time())

    def token(self) -> None:
        """Note a sampled token (only the first one matters)."""
        if self.first_token_at is None:
            self.first_token_at = time.time()

    def end(
        self,
        request_id: str,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        outcome: str,
    ) -> None:
        """Record the request's engine spans now that it ended (``outcome``: a reason or kind)."""
        ended = time.time()
        parent = _PROPAGATOR.extract({"traceparent": self.traceparent})
        tracer = trace.get_tracer(TRACER_NAME)
        common = {"troupe.request_id": request_id}

        def span(name: str, start: float, stop: float, **attributes: str | int) -> None:
            recorded = tracer.start_span(
                name, context=parent, start_time=_ns(start), attributes={**common, **attributes}
            )
            recorded.end(end_time=_ns(max(start, stop)))

        if self.submitted_at is not None:
            span("queue", min(self.submitted_at, self.started_at), self.started_at)
        first = self.first_token_at
        span(
            "prefill",
            self.started_at,
            ended if first is None else first,
            **{"gen_ai.usage.input_tokens": prompt_tokens, "troupe.cached_tokens": cached_tokens},
        )
        if first is not None:
            decoded: dict[str, str | int] = {
                "gen_ai.usage.output_tokens": completion_tokens,
                "troupe.outcome": outcome,
            }
            span("decode", first, ended, **decoded)
