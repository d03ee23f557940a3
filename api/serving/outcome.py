"""How a completion request ended, and telling metrics, the audit log and the log.

Every request to the completion endpoints is reported exactly once, refused
ones included: :meth:`Reporter.reporting` wraps the whole handler, records
the problem that refused it (the same mapping the error middleware answers
with, so the reported status is the one the client got), and reports when the
handler is done. Reports are metadata only: statuses, timings and token
counts, never the text.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import INVALID_SPAN, Span

from actors.generation.protocol import Failed, Finished, TokenLogprob
from actors.intake.protocol import Ending
from actors.metrics.protocol import RequestCompleted
from api.http.asgi import ClientDisconnected, Request
from api.http.logs import annotate
from api.http.observe import Observer, Timing
from api.http.problems import Problem, innermost, problem_for
from api.http.tracing import RequestTracing
from api.serving.writers import ReplyWriter


class Cancellation(enum.StrEnum):
    """What cut a request short (the value is the metrics' ``cause`` label)."""

    DISCONNECT = "disconnect"
    """The client went away before its answer was complete."""
    DEADLINE = "deadline"
    """The request's deadline passed."""

    @property
    def status(self) -> int:
        """The status it is reported with (499: nginx's "client closed request")."""
        return 499 if self is Cancellation.DISCONNECT else 504

    @property
    def error_type(self) -> str:
        """The audit's and the log's ``error_type``."""
        return "client_disconnect" if self is Cancellation.DISCONNECT else "deadline_exceeded"

    @property
    def ending(self) -> Ending:
        """How intake counts it."""
        if self is Cancellation.DISCONNECT:
            return Ending.CANCELLED_DISCONNECT
        return Ending.CANCELLED_DEADLINE


class AuditSink(Protocol):
    """Where the reporter writes one audit row per request (the admin's audit log)."""

    def record(
        self,
        request: Request,
        *,
        model: str,
        endpoint: str,
        status: int,
        duration_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str | None,
        error_type: str | None,
    ) -> None:
        """Submit the row of one finished request (never blocks)."""
        ...


@dataclass
class Outcome:
    """What a request produced, for the response, intake, metrics, audit and logs."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Of the tokens of ``text``, when the request asked for them."""
    end: Finished | Failed | None = None
    tokens_sent: int = 0
    cancelled_by: Cancellation | None = None
    """What cut the request short, if anything did."""
    timing: Timing = field(default_factory=Timing)
    admitted: bool = False
    """Intake let it in (refused requests take no part in the latency figures)."""
    release_due: bool = False
    """Intake may hold a booking of it: admitted, or cut short while intake was
    still deciding (intake may book it after the asker gave up)."""
    prompt_tokens: int = 0
    """The prompt's length once tokenized."""
    refused: Problem | None = None
    """The problem that answered it, when one was raised (bad input, shed, ...)."""
    model: str = ""
    """The served model it named, once known ("": the reporter's default)."""
    span: Span = INVALID_SPAN
    """The request's trace span (a non-recording one while tracing is off)."""
    reply: ReplyWriter | None = None
    """The writer answering it, once chosen (a stream cut short ends through it)."""

    @property
    def status(self) -> int:
        """The status the request ended with (499: the client went away first)."""
        if self.refused is not None:
            return self.refused.status
        if self.cancelled_by is not None:
            return self.cancelled_by.status
        if isinstance(self.end, Finished):
            return 200
        return problem_for(self.end).status if isinstance(self.end, Failed) else 500

    @property
    def finish_reason(self) -> str | None:
        """``stop``, ``length``, ``cancelled``, or ``None`` when it failed."""
        if isinstance(self.end, Finished):
            return self.end.reason.value
        return "cancelled" if self.cancelled_by is not None else None

    @property
    def error_type(self) -> str | None:
        """A short class of what went wrong (never a message): a failure kind or a slug."""
        if self.refused is not None:
            return self.refused.slug.replace("-", "_")
        if self.cancelled_by is not None:
            return self.cancelled_by.error_type
        return self.end.kind.value if isinstance(self.end, Failed) else None

    @property
    def ending(self) -> Ending:
        """How intake counts the ending."""
        if self.cancelled_by is not None:
            return self.cancelled_by.ending
        return Ending.COMPLETED if isinstance(self.end, Finished) else Ending.FAILED


class Reporter:
    """Reports each request's outcome to metrics, the audit log (if any) and the log."""

    def __init__(
        self, model_name: str, observer: Observer, tracing: RequestTracing | None = None
    ) -> None:
        self.model_name = model_name
        self._observer = observer
        self._audit: AuditSink | None = None
        self.tracing = tracing or RequestTracing()
        """The request spans (off unless the server was given a tracing provider)."""

    def attach_audit(self, audit: AuditSink | None) -> None:
        """Write rows to ``audit`` from now on (``None``: no more rows)."""
        self._audit = audit

    @contextlib.asynccontextmanager
    async def reporting(
        self, request: Request, endpoint: str, gate: Callable[[], None]
    ) -> AsyncIterator[Outcome]:
        """Report the request wrapped by this block once it ends, refused or not.

        ``gate`` runs first and raises the problem that refuses every request
        now (draining, not ready), so that those are reported too.
        """
        outcome = Outcome(span=self.tracing.start(request.scope, endpoint, request.request_id))
        try:
            gate()
            yield outcome
        except Exception as exc:
            inner = innermost(exc)
            if isinstance(inner, ClientDisconnected):
                # Gone mid-upload: nobody got an answer.
                outcome.cancelled_by = Cancellation.DISCONNECT
            else:
                outcome.refused = problem_for(inner)
            raise
        finally:
            event = self.report(request, endpoint, outcome)
            self.tracing.end(outcome.span, event, outcome.error_type)

    def report(self, request: Request, endpoint: str, outcome: Outcome) -> RequestCompleted:
        """Tell the metrics actor, the audit log if there is one, and the log how it ended."""
        timing = outcome.timing
        finished = outcome.end if isinstance(outcome.end, Finished) else None
        event = RequestCompleted(
            endpoint=endpoint,
            status=outcome.status,
            model=outcome.model or self.model_name,
            duration_s=time.monotonic() - timing.start,
            ttft_s=None if timing.first is None else timing.first - timing.start,
            inter_token_s=timing.gaps(),
            queue_s=finished.queued_s if finished else None,
            prompt_tokens=finished.prompt_tokens if finished else outcome.prompt_tokens,
            completion_tokens=finished.completion_tokens if finished else outcome.tokens_sent,
            finish_reason=outcome.finish_reason,
            admitted=outcome.admitted,
        )
        if outcome.cancelled_by is not None:
            self._observer.cancelled(outcome.cancelled_by.value)
        self._observer.completed(event)
        if self._audit is not None:
            self._audit.record(
                request,
                model=event.model,
                endpoint=endpoint,
                status=event.status,
                duration_s=event.duration_s,
                ttft_s=event.ttft_s,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                finish_reason=event.finish_reason,
                error_type=outcome.error_type,
            )
        annotate(
            request.scope,
            endpoint=endpoint,
            model=event.model,
            status=event.status,
            finish_reason=event.finish_reason,
            ttft_ms=None if event.ttft_s is None else round(event.ttft_s * 1000.0, 3),
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached_tokens=finished.cached_tokens if finished else 0,
            error_type=outcome.error_type,
        )
        trace_id = self.tracing.trace_id(outcome.span)
        if trace_id is not None:  # the line leads to the trace, and back
            annotate(request.scope, trace_id=trace_id)
        return event
