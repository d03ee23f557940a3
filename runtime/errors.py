"""Typed errors of the actor runtime, and the one place failures become safe text.

Every error raised on purpose by the runtime derives from :class:`TroupeError`;
their messages are written to be shown to operators and clients, so they name
actors and numbers but never carry user data. Foreign exceptions (from actor
code) are described by :func:`describe_failure`, which keeps only the exception
type and where it was raised: their messages may contain prompt text, file paths
or secrets, so they never reach a status snapshot, an event or a log line.
"""

from __future__ import annotations

import types

_MAX_REASON = 200


class TroupeError(Exception):
    """Base of the runtime's own errors; ``str()`` of one is safe to show."""


class DeliveryError(TroupeError):
    """A message could not be delivered to, or answered by, an actor."""

    def __init__(self, actor: str, message: str) -> None:
        super().__init__(message)
        self.actor = actor


class MailboxFull(DeliveryError):
    """The actor's mailbox is at capacity; retryable (the HTTP layer maps it to 429)."""

    def __init__(self, actor: str, capacity: int) -> None:
        super().__init__(actor, f"mailbox of actor {actor!r} is full ({capacity} messages)")
        self.capacity = capacity


class ActorStopped(DeliveryError):
    """The actor is stopped for good and accepts no more messages."""

    def __init__(self, actor: str) -> None:
        super().__init__(actor, f"actor {actor!r} is stopped")


class ActorDied(DeliveryError):
    """The actor exited before it answered this ask."""

    def __init__(self, actor: str, reason: str) -> None:
        super().__init__(actor, f"actor {actor!r} died before answering: {reason}")
        self.reason = reason


class AskTimeout(TroupeError, TimeoutError):
    """An ask got no answer before its deadline."""

    def __init__(self, actor: str, timeout: float) -> None:
        super().__init__(f"actor {actor!r} did not answer within {timeout:g}s")
        self.actor = actor
        self.timeout = timeout


class UnexpectedReply(TroupeError, TypeError):
    """An ask was answered with a message of another type than the caller expected."""

    def __init__(self, actor: str, expected: type, got: object) -> None:
        super().__init__(
            f"actor {actor!r} answered {type(got).__name__}, expected {expected.__name__}"
        )


class ChildStartError(TroupeError):
    """A child failed to start; the already started siblings were stopped."""

    def __init__(self, child: str, reason: str) -> None:
        super().__init__(f"child {child!r} failed to start: {reason}")
        self.child = child
        self.reason = reason


class SupervisorEscalated(TroupeError):
    """A supervisor exceeded its restart intensity and gave up on its children."""

    def __init__(self, supervisor: str, reason: str) -> None:
        super().__init__(f"supervisor {supervisor!r} gave up: {reason}")
        self.supervisor = supervisor
        self.reason = reason


class ExitActor(Exception):
    """Raised by actor code to end its own incarnation without crashing.

    ``reason`` is ``"normal"`` or ``"shutdown"``, as in OTP: a transient child
    exiting this way is not restarted, a permanent one is.
    """

    def __init__(self, reason: str = "normal") -> None:
        if reason not in ("normal", "shutdown"):
            raise ValueError(f"exit reason must be 'normal' or 'shutdown', not {reason!r}")
        super().__init__(reason)
        self.reason = reason


def describe_failure(exc: BaseException) -> str:
    """Return a sanitized one-line description of ``exc``.

    Our own errors keep their message; any other exception is reduced to its
    type and the module, function and line that raised it.
    """
    text = str(exc) if isinstance(exc, TroupeError) else type(exc).__qualname__
    where = _origin(exc.__traceback__)
    line = f"{text} (in {where})" if where else text
    line = " ".join(line.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _origin(tb: types.TracebackType | None) -> str:
    """Name the innermost frame by module name (never a file path) and line."""
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    module = frame.f_globals.get("__name__", "?")
    return f"{module}.{frame.f_code.co_name}:{tb.tb_lineno}"
