"""Problems with the configuration: what loading and checking report, and how they print.

Errors stop the server (``troupe serve`` and ``troupe check-config`` exit 2
with the whole list); warnings are only shown. Messages describe settings but
never quote secrets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import msgspec


class Severity(enum.StrEnum):
    """How bad a problem is: errors stop the server, warnings are only shown."""

    ERROR = "error"
    WARNING = "warning"


class ConfigProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong (or doubtful) about the configuration.

    Attributes:
        severity: Whether it stops the server.
        setting: The setting concerned, or ``None`` (a file, a dependency).
        message: A readable sentence without secrets.
    """

    severity: Severity
    setting: str | None
    message: str


def error(setting: str | None, message: str) -> ConfigProblem:
    """A problem that stops the server."""
    return ConfigProblem(severity=Severity.ERROR, setting=setting, message=message)


def warning(setting: str | None, message: str) -> ConfigProblem:
    """A problem that is shown but lets the server start."""
    return ConfigProblem(severity=Severity.WARNING, setting=setting, message=message)


def has_errors(problems: Iterable[ConfigProblem]) -> bool:
    """Whether any problem is an error."""
    return any(problem.severity is Severity.ERROR for problem in problems)


def format_problems(problems: Iterable[ConfigProblem]) -> str:
    """Render problems one a line, errors first, e.g. ``error    port: ...``."""
    ordered = sorted(problems, key=lambda p: p.severity is not Severity.ERROR)
    lines = []
    for problem in ordered:
        where = f"{problem.setting}: " if problem.setting else ""
        lines.append(f"{problem.severity.value:<8} {where}{problem.message}")
    return "\n".join(lines)
