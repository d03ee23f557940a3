"""The HTTP side of a request's trace: its span, and the children it times itself.

Every request to a generating endpoint gets one ``SERVER`` span, a child of
the caller's span when the request carries a W3C ``traceparent``. Its children
here are ``admission``, ``tokenization`` and ``stream_end`` (writing the
answer's last bytes); the engine adds ``queue``, ``prefill`` and ``decode`` from
its own process (:mod:`actors.generation.engine.spans`), joined through the
``traceparent`` this module writes into ``Generate``.

Attributes follow OpenTelemetry's GenAI semantic conventions (operation,
model, token counts, finish reasons) plus the request id; no prompt or
completion text is ever set. With tracing off the tracer is OpenTelemetry's
no-op one: a few calls that record nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from actors.metrics.protocol import RequestCompleted

TRACER_NAME = "mlx_troupe.http"
OPERATIONS: Mapping[str, str] = {
    "chat": "chat",
    "completions": "text_completion",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
}
"""GenAI's ``gen_ai.operation.name`` of each endpoint."""
SERVER_ERROR = 500
_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = (b"traceparent", b"tracestate")


class RequestTracing:
    """Starts and ends the spans of the HTTP side; records nothing while tracing is off."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        """``tracer``: from the process's provider; ``None``: tracing is off."""
        self._tracer = tracer
        self.on = tracer is not None

    @classmethod
    def from_provider(cls, provider: trace.TracerProvider | None = None) -> RequestTracing:
        """Tracing through ``provider``, or the one this process installed."""
        return cls(trace.get_tracer(TRACER_NAME, tracer_provider=provider))

    def start(self, scope: Mapping[str, object], endpoint: str, request_id: str) -> Span:
        """The request's span, a child of the caller's trace context when it sent one."""
        if self._tracer is None:
            return INVALID_SPAN
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())  # type: ignore[attr-defined]  # reason: ASGI scope
            if name in _CONTEXT_HEADERS
        }
        operation = OPERATIONS.get(endpoint, endpoint)
        return self._tracer.start_span(
            operation,
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "troupe.request_id": request_id,
                "troupe.endpoint": endpoint,
            },
        )

    @contextlib.contextmanager
    def child(self, parent: Span, name: str) -> Iterator[None]:
        """Time the block as a child span of ``parent`` (nothing when not recording)."""
        if self._tracer is None or not parent.is_recording():
            yield
            return
        context = trace.set_span_in_context(parent)
        # An exception's message and traceback must not reach a span (they may
        # hold paths or text); the request span carries the error's type instead.
        with self._tracer.start_as_current_span(
            name, context=context, record_exception=False, set_status_on_exception=False
        ):
            yield

    def trace_id(self, span: Span) -> str | None:
        """``span``'s trace id in hex, for the request's log line; ``None`` when not recording."""
        if not span.is_recording():
            return None
        return format(span.get_span_context().trace_id, "032x")

    def traceparent(self, span: Span) -> str | None:
        """``span``'s W3C trace context, for the engine's spans; ``None`` when not recording."""
        if not span.is_recording():
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def end(self, span: Span, event: RequestCompleted, error_type: str | None) -> None:
        """Name the span after its model, set what the request came to, and end it."""
        if not span.is_recording():
            return
        operation = OPERATIONS.get(event.endpoint, event.endpoint)
        span.update_name(f"{operation} {event.model}")
        attributes: dict[str, str | int | float | list[str]] = {
            "gen_ai.request.model": event.model,
            "gen_ai.response.model": event.model,
            "gen_ai.usage.input_tokens": event.prompt_tokens,
            "gen_ai.usage.output_tokens": event.completion_tokens,
            "http.response.status_code": event.status,
        }
        if event.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [event.finish_reason]
        if event.ttft_s is not None:
            attributes["gen_ai.latency.time_to_first_token"] = event.ttft_s
        if event.queue_s is not None:
            attributes["gen_ai.latency.time_in_queue"] = event.queue_s
        if error_type is not None:
            attributes["error.type"] = error_type
        span.set_attributes(attributes)
        if event.status >= SERVER_ERROR:
            span.set_status(StatusCode.ERROR, error_type)
        span.end()
