"""RFC 7807 problem details, and the one place errors become HTTP statuses.

Every error response of the server is ``application/problem+json`` with
``type``, ``title``, ``status``, ``detail``, ``instance`` and ``request_id``.
:func:`problem_for` maps everything the handlers can meet (our own
:class:`HTTPProblem`, runtime delivery errors, generation failures, intake
rejections) to a :class:`Problem`; anything else is a 500 whose detail says
nothing about the failure, because exception text can carry prompt text,
paths or secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from actors.generation.protocol import MODEL_RETRY_AFTER, Failed, FailureKind
from runtime import ActorDied, ActorStopped, AskTimeout, MailboxFull

PROBLEM_TYPE = "https://mlx-troupe.dev/problems/"
"""Base of the ``type`` URIs; the suffix is the problem's slug."""

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Problem:
    """What an error response says."""

    status: int
    slug: str
    detail: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def title(self) -> str:
        """The status's standard reason phrase."""
        return TITLES.get(self.status, "Error")


@dataclass(frozen=True)
class ProblemShape:
    """A protocol's own error answer for a problem."""

    body: Callable[[Problem, str], object]
    """The error body, given the request id (JSON-encoded as is)."""
    statuses: Mapping[int, int] = field(default_factory=dict)
    """Statuses the protocol answers otherwise (Anthropic's API: 400 where this server says 422)."""

    def status(self, problem: Problem) -> int:
        """The HTTP status this protocol answers ``problem`` with."""
        return self.statuses.get(problem.status, problem.status)


@dataclass(frozen=True)
class ProblemShapes:
    """Route families that answer errors in their protocol's shape instead of problem+json.

    The error middleware looks the request's path up once and leaves the shape
    in the scope's state, where every responder of the request finds it: a
    protocol plugs its error shape in without this package knowing it.
    """

    by_prefix: tuple[tuple[str, ProblemShape], ...] = ()

    def for_path(self, path: str) -> ProblemShape | None:
        """The shape of errors on ``path`` (``None``: problem+json)."""
        for prefix, shape in self.by_prefix:
            if path == prefix or path.startswith(prefix + "/"):
                return shape
        return None


class HTTPProblem(Exception):
    """Raised by handlers to answer with a problem response."""

    def __init__(
        self, status: int, slug: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(status, slug, detail, headers)


class ProblemBody(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of a problem response."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str


_FAILURE_STATUS = {
    FailureKind.PROMPT_TOO_LONG: (400, "context-length-exceeded"),
    FailureKind.INVALID_REQUEST: (422, "invalid-request"),
    FailureKind.ENGINE_CRASHED: (503, "engine-restarted"),
    FailureKind.OUT_OF_MEMORY: (503, "out-of-memory"),
    FailureKind.SHUTTING_DOWN: (503, "shutting-down"),
    FailureKind.DEADLINE_EXCEEDED: (504, "deadline-exceeded"),
    FailureKind.MODEL_UNAVAILABLE: (503, "model-unavailable"),
}


def problem_for(error: BaseException | Failed) -> Problem:  # noqa: PLR0911 - one per error
    """The problem that answers ``error``: the single mapping of errors to statuses."""
    match error:
        case HTTPProblem(problem=problem):
            return problem
        case Failed(kind=FailureKind.ENGINE_CRASHED, detail=detail, retryable=False):
            # The engine died each time this request ran: not worth a retry.
            return Problem(500, "engine-failed", detail)
        case Failed(kind=kind, detail=detail, retryable=retryable):
            status, slug = _FAILURE_STATUS[kind]
            headers = (("retry-after", "1"),) if retryable and status == 503 else ()
            if kind is FailureKind.MODEL_UNAVAILABLE:
                headers = (("retry-after", f"{MODEL_RETRY_AFTER:.0f}"),)
            return Problem(status, slug, detail, headers)
        case MailboxFull():
            return Problem(
                429, "overloaded", "the server is overloaded; retry later", (("retry-after", "1"),)
            )
        case ActorStopped() | ActorDied():
            return Problem(
                503,
                "unavailable",
                "the server is not serving requests now",
                (("retry-after", "1"),),
            )
        case AskTimeout():
            return Problem(
                503, "unavailable", "the server did not answer in time", (("retry-after", "1"),)
            )
    return Problem(500, "internal-error", "the server failed to handle this request")


def innermost(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, else ``exc`` itself.

    Task groups wrap what a handler raised; the mapping looks at that.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def encode_problem(problem: Problem, *, request_id: str, instance: str) -> bytes:
    """The response body for ``problem``."""
    return msgspec.json.encode(
        ProblemBody(
            type=PROBLEM_TYPE + problem.slug,
            title=problem.title,
            status=problem.status,
            detail=problem.detail,
            instance=instance,
            request_id=request_id,
        )
    )
