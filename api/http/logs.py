"""Structured logs: one JSON object per line, one line per request, and lifecycle events.

Every record carries ``ts``, ``level``, ``logger``, ``message`` and
``request_id`` (``null`` outside a request), plus the structured fields its
caller passed with ``extra=``. Three kinds of line matter to operators:

* ``"event": "request"``: written by :class:`AccessLogMiddleware` when a
  request has been answered: method, path, status, duration, and what the
  handler added with :func:`annotate` (model, finish reason, time to first
  token, token counts, error type).
* ``"event": "actor_started"`` (``_crashed``, ``_restarted``, ``_stopped``,
  ``_escalated``): the supervision tree's lifecycle, from :func:`log_lifecycle`.
* ``"event": "server_started"`` (``_draining``, ``_stopped``, ``_escalated``).

Nothing here ever writes prompt or completion text: handlers annotate only
metadata, and an exception is reduced to its type and origin
(:func:`runtime.describe_failure`), never its message or a traceback, since
either can carry prompt text, paths or secrets.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import anyio
import msgspec

from api.config.settings import LogFormat
from api.http.asgi import ASGIApp, ASGIMessage, Receive, Scope, Send
from api.http.middleware import RequestIdFilter
from runtime import describe_failure
from runtime.events import Subscription
from runtime.lifecycle import Crashed, Escalated, Event, Restarted, Started, Stopped

log = logging.getLogger("troupe.http")
lifecycle_log = logging.getLogger("troupe.lifecycle")

LOG_FIELDS = "troupe.log"
"""Key in the ASGI scope's ``state`` under which handlers leave fields for the request line."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_BARE_RECORD = logging.LogRecord("", 0, "", 0, "", None, None)
_STANDARD = frozenset(_BARE_RECORD.__dict__) | {"message", "asctime", "request_id", "taskName"}
_encoder = msgspec.json.Encoder(enc_hook=str)
_DIRECTORIES = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"<>:]+)+[\\/]")
"""Leading directories of a path, so that a warning's text keeps only file names."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"}


def _request_id(record: logging.LogRecord) -> str | None:
    value = getattr(record, "request_id", "-")
    return None if value in ("-", None) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON: the standard keys, then its ``extra=`` fields."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id(record),
        }
        for key, value in _extras(record).items():
            line.setdefault(key, value)  # a stray extra never hides a standard key
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = describe_failure(record.exc_info[1])
        return _encoder.encode(line).decode("utf-8")


class TextFormatter(logging.Formatter):
    """One readable line per record: the message, then its fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The classic line, with the structured fields appended; never a traceback."""
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        fields = _extras(record)
        if saved[0] and saved[0][1] is not None:
            fields["error"] = describe_failure(saved[0][1])
        tail = " ".join(f"{key}={_show(value)}" for key, value in fields.items())
        return f"{line} {tail}" if tail else line


def _show(value: object) -> str:
    text = value if isinstance(value, str) else _encoder.encode(value).decode("utf-8")
    return text if text and " " not in text and '"' not in text else _encoder.encode(text).decode()


def configure_logging(level: str, form: LogFormat = "json") -> None:
    """Send every record (ours, hypercorn's, warnings) to stderr in ``form``, tagged with ids.

    Python's own writers to stderr are redirected too, so that no line escapes
    the format: warnings become records (their text without directories), and
    an uncaught exception, in the main thread or another, is logged as its
    type and origin instead of a traceback.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    warnings.showwarning = _log_warning
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = _DIRECTORIES.sub("", str(message))
    where = f"{os.path.basename(filename)}:{lineno}"
    fields = {"event": "warning", "category": category.__name__, "where": where}
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text, extra=fields)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    fields = {"event": "uncaught_exception", "error": describe_failure(error)}
    logging.getLogger("troupe").critical("uncaught %s", kind.__name__, extra=fields)


def _log_uncaught_in_thread(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_value is None or isinstance(hook.exc_value, SystemExit):
        return
    name = hook.thread.name if hook.thread is not None else "?"
    fields = {"event": "uncaught_exception", "thread_name": name}
    fields["error"] = describe_failure(hook.exc_value)
    logging.getLogger("troupe").critical("uncaught %s", hook.exc_type.__name__, extra=fields)


def _safe(fields: Mapping[str, object]) -> dict[str, object]:
    """``fields`` as ``extra=``, a name a LogRecord uses itself suffixed with ``_field``.

    logging refuses to overwrite a record's own attribute (``thread``,
    ``module``...), and a log line must never raise.
    """
    return {f"{k}_field" if k in _STANDARD else k: v for k, v in fields.items()}


def annotate(scope: Scope, **fields: object) -> None:
    """Add metadata (never content) to the request's log line."""
    scope.setdefault("state", {}).setdefault(LOG_FIELDS, {}).update(fields)


class AccessLogMiddleware:
    """Write one ``request`` line per HTTP request once it has been answered.

    Sits inside :class:`~api.http.middleware.RequestIdMiddleware` (so the line has
    the request id) and outside the error mapping (so it sees the status the
    client got). Fields a handler set with :func:`annotate` win over the
    ones seen here: a stream cut short by a disconnect began as a 200, but its
    handler knows it ended as a 499.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500  # if the app ends without answering, the server answers 500

        async def send_with_status(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            fields: dict[str, object] = {
                "event": "request",
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.monotonic() - start) * 1000.0, 3),
            }
            fields.update(scope.get("state", {}).get(LOG_FIELDS, {}))
            log.info(
                "%s %s %s", fields["method"], fields["path"], fields["status"], extra=_safe(fields)
            )


_LIFECYCLE_LEVELS = {
    Started: logging.INFO,
    Restarted: logging.INFO,
    Stopped: logging.INFO,
    Crashed: logging.WARNING,
    Escalated: logging.ERROR,
}


def lifecycle_fields(event: Event) -> dict[str, object]:
    """An event's fields for its log line (its reasons are sanitized at the source)."""
    fields: Mapping[str, Any] = msgspec.structs.asdict(event)
    name = type(event).__name__.lower()
    return {"event": f"actor_{name}", **{k: v for k, v in fields.items() if k != "at"}}


def _log_event(event: Event) -> None:
    fields = lifecycle_fields(event)
    level = _LIFECYCLE_LEVELS.get(type(event), logging.INFO)
    lifecycle_log.log(level, "%s %s", fields["event"], event.path, extra=_safe(fields))


async def log_lifecycle(subscription: Subscription[Event]) -> None:
    """Log each lifecycle event of the tree until cancelled; then close the subscription.

    On cancellation the events already buffered are logged first, so the
    ``actor_stopped`` lines of a shutdown are written even though the
    shutdown is what ends this task.
    """
    try:
        async for event in subscription:
            _log_event(event)
    except anyio.ClosedResourceError:
        pass
    finally:
        while True:
            try:
                _log_event(subscription.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        with anyio.CancelScope(shield=True):
            await subscription.aclose()
