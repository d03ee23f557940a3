"""``troupe status``: the supervision tree of a running server, as a table.

Reads ``GET {url}/v1/supervisor`` (a :class:`runtime.status.SystemStatus`
encoded by msgspec, optionally with a ``cache`` object carrying
``breaker.state``) and prints one row per actor, indented by depth. ``--json``
prints the body as received; ``--watch`` refreshes until Ctrl-C.

Every failure (nothing listening, a timeout, an error status, a body that is
not a status) is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TextIO

import httpx
import msgspec

from runtime.status import ActorStatus, Failure, SupervisorStatus, SystemStatus

DEFAULT_URL: Final = "http://127.0.0.1:8000"
ENDPOINT: Final = "/v1/supervisor"
DEFAULT_WATCH: Final = 2.0
KEY_ENV: Final = "TROUPE_API_KEYS"
"""Without ``--api-key``, the first key here is sent: the environment ``troupe serve``
reads works for ``troupe status`` too, and keeps the key out of ``ps``."""
FAILED: Final = 1
USAGE: Final = 2
_CLEAR: Final = "\x1b[H\x1b[2J"  # cursor home, clear screen
_REASON_WIDTH: Final = 48


class StatusError(Exception):
    """The status could not be fetched or read; ``str()`` is one readable line."""


class _Breaker(msgspec.Struct):
    state: str


class _Cache(msgspec.Struct):
    breaker: _Breaker | None = None


class _Exit(msgspec.Struct):
    reason: str


class _Process(msgspec.Struct):
    pid: int | None = None
    uptime_seconds: float | None = None
    restarts: int = 0
    heartbeat_age_seconds: float | None = None
    last_exit: _Exit | None = None
    retried: int = 0
    resumed: int = 0
    poisoned: int = 0


class _Engine(msgspec.Struct):
    process: _Process | None = None


class _Model(msgspec.Struct):
    name: str
    phase: str
    weights_bytes: int = 0
    in_flight: int = 0
    idle_seconds: float | None = None
    loads: int = 0
    unloads: int = 0


class _Models(msgspec.Struct):
    models: list[_Model] = msgspec.field(default_factory=list)


class _Tenant(msgspec.Struct):
    tenant: str
    in_flight: int = 0
    admitted_total: int = 0
    shed_total: int = 0
    weight: float = 1.0
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None


class _Intake(msgspec.Struct):
    tenants: list[_Tenant] = msgspec.field(default_factory=list)


class _Extras(msgspec.Struct):
    """The optional parts of the response that are not in ``SystemStatus``."""

    cache: _Cache | None = None
    engine: _Engine | None = None
    models: _Models | None = None
    intake: _Intake | None = None


class _Problem(msgspec.Struct):
    """An RFC 9457 problem body, as far as a one-line message needs it."""

    title: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """One response: the decoded status, the cache breaker's state if sent, the raw body."""

    status: SystemStatus
    cache_breaker: str | None
    body: bytes
    engine_process: str | None = None
    """One line about the engine process, if the engine runs in one."""
    models: list[list[str]] | None = None
    """A table row per served model, when the server serves several."""
    tenants: list[list[str]] | None = None
    """The caller's tenant's row, on a server with keys."""


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``troupe status`` flags to ``parser``."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default: {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON response")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=DEFAULT_WATCH,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default: {DEFAULT_WATCH:g}) until Ctrl-C",
    )
    parser.add_argument(
        "--admin-key",
        "--api-key",
        dest="key",
        metavar="KEY",
        help=f"bearer key for the request (default: the first key in ${KEY_ENV})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default: 5")


def status_command(args: argparse.Namespace) -> int:
    """Run ``troupe status`` with parsed arguments; returns the exit status."""
    key = args.key or os.environ.get(KEY_ENV, "").split(",")[0].strip()
    if mistake := _usage_mistake(args, key):
        return _fail(mistake, USAGE)
    url = str(args.url).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=args.timeout, headers=headers) as client:
        try:
            if args.watch is None:
                snapshot = fetch(client, url)
                _show(snapshot, url, as_json=args.json, out=sys.stdout)
                return 0
            return _watch(client, url, args.watch, as_json=args.json)
        except StatusError as exc:
            return _fail(str(exc), FAILED)
        except KeyboardInterrupt:
            # Ctrl-C is how --watch is meant to end; a single fetch interrupted is not a success.
            print(file=sys.stderr)
            return 0 if args.watch is not None else 130


def _usage_mistake(args: argparse.Namespace, key: str) -> str | None:
    try:
        url = httpx.URL(args.url)
        port_ok = url.port is None or 1 <= url.port <= 65535
    except httpx.InvalidURL as exc:
        return f"--url {args.url!r} is not a valid URL: {exc}"
    if url.scheme not in {"http", "https"} or not url.host or not port_ok:
        return f"--url needs http:// or https://, a host and a valid port; got {args.url!r}"
    # Header values are ASCII; anything else would fail deep inside httpx.
    if key and not (key.isascii() and key.isprintable()):
        return "the key must be printable ASCII"
    if args.watch is not None and not args.watch > 0:
        return "--watch needs a positive number of seconds"
    if not args.timeout > 0:
        return "--timeout needs a positive number of seconds"
    return None


def fetch(client: httpx.Client, url: str) -> Snapshot:
    """``GET {url}/v1/supervisor`` and decode it.

    Raises:
        StatusError: Unreachable, timed out, an error status, or an unreadable body.
    """
    target = url + ENDPOINT
    try:
        response = client.get(target)
    except httpx.TimeoutException:
        raise StatusError(f"{target}: no answer within {client.timeout.read:g} s") from None
    except httpx.ConnectError as exc:
        hint = "is troupe serve running?"
        raise StatusError(f"cannot connect to {url}: {_reason(exc)} ({hint})") from None
    except httpx.HTTPError as exc:
        raise StatusError(f"{target}: {_reason(exc)}") from None
    if response.status_code != httpx.codes.OK:
        raise StatusError(_describe_error(target, response))
    try:
        status = msgspec.json.decode(response.content, type=SystemStatus)
        extras = msgspec.json.decode(response.content, type=_Extras)
    except msgspec.DecodeError as exc:
        raise StatusError(f"{target} did not answer with a supervisor status: {exc}") from None
    breaker = extras.cache.breaker if extras.cache else None
    process = extras.engine.process if extras.engine else None
    return Snapshot(
        status,
        breaker.state if breaker else None,
        response.content,
        None if process is None else _describe_process(process),
        None if extras.models is None else [_model_row(m) for m in extras.models.models],
        [_tenant_row(t) for t in extras.intake.tenants] if extras.intake else None,
    )


def _tenant_row(tenant: _Tenant) -> list[str]:
    limits = [
        f"{tenant.max_concurrent} at once" if tenant.max_concurrent is not None else "",
        f"{tenant.tokens_per_minute:,} tokens/min" if tenant.tokens_per_minute else "",
    ]
    return [
        tenant.tenant,
        str(tenant.in_flight),
        str(tenant.admitted_total),
        str(tenant.shed_total),
        f"{tenant.weight:g}",
        ", ".join(limit for limit in limits if limit) or "-",
    ]


def _model_row(model: _Model) -> list[str]:
    idle = "-" if model.idle_seconds is None else format_duration(model.idle_seconds)
    return [
        model.name,
        model.phase,
        f"{model.weights_bytes / 2**20:,.1f} MiB",
        str(model.in_flight),
        idle,
        f"{model.loads}/{model.unloads}",
    ]


def _describe_process(process: _Process) -> str:
    """``pid 4441, up 12.3s, 1 restart, heartbeat 0.2s ago; last exit: ...; requests ...``."""
    if process.pid is None:
        head = "none serving (starting or restarting)"
    else:
        beat = format_duration(process.heartbeat_age_seconds)
        head = (
            f"pid {process.pid}, up {format_duration(process.uptime_seconds)}, heartbeat {beat} ago"
        )
    restarts = f"{process.restarts} restart{'' if process.restarts == 1 else 's'}"
    last = f"; last exit: {process.last_exit.reason}" if process.last_exit else ""
    carried = (
        f"; requests resumed {process.resumed}, retried {process.retried}, "
        f"failed as poison {process.poisoned}"
    )
    return f"{head}, {restarts}{last}{carried}"


def render(snapshot: Snapshot, url: str) -> str:
    """The status as a header line, a table of actors and optional footer lines."""
    status = snapshot.status
    clock = time.strftime("%H:%M:%S", time.localtime(status.at))
    lines = [
        f"{url} at {clock}: {status.dead_letters} dead letters, "
        f"{status.events_published} events ({status.events_dropped} dropped)",
        "",
    ]
    header = ["ACTOR", "STATE", "RESTARTS", "LAST FAILURE", "MAILBOX", "UPTIME"]
    lines += _table([header, *_rows(status.root, 0, status.at)])
    if snapshot.models is not None:
        header = ["MODEL", "PHASE", "WEIGHTS", "IN FLIGHT", "IDLE", "LOADS/UNLOADS"]
        lines += ["", *_table([header, *snapshot.models])]
    if snapshot.tenants:
        header = ["TENANT", "IN FLIGHT", "ADMITTED", "SHED", "WEIGHT", "LIMITS"]
        lines += ["", *_table([header, *snapshot.tenants])]
    if snapshot.engine_process is not None:
        lines.append(f"\nengine process: {snapshot.engine_process}")
    if snapshot.cache_breaker is not None:
        lines.append(f"\ncache breaker: {snapshot.cache_breaker}")
    if status.failure is not None:
        lines.append(f"\nsystem stopped: {status.failure}")
    return "\n".join(lines)


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``4.2s``, ``3m 07s``, ``2h 05m``, ``3d 04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // sub_size:02d}{sub}"
    return f"{whole // 60}m {whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _watch(client: httpx.Client, url: str, interval: float, *, as_json: bool) -> int:
    """Refresh until interrupted; a failure after the first success is shown and retried.

    The first fetch failing means a wrong URL or key, so it ends the command;
    later ones are usually a server restarting, which is worth watching through.
    """
    succeeded = False
    while True:
        try:
            snapshot = fetch(client, url)
        except StatusError as exc:
            if not succeeded:
                raise
            stamp = time.strftime("%H:%M:%S")
            print(f"troupe status: {stamp}: {exc}", file=sys.stderr, flush=True)
        else:
            succeeded = True
            if not as_json and sys.stdout.isatty():
                sys.stdout.write(_CLEAR)
            _show(snapshot, url, as_json=as_json, out=sys.stdout)
        time.sleep(interval)


def _show(snapshot: Snapshot, url: str, *, as_json: bool, out: TextIO) -> None:
    text = snapshot.body.decode("utf-8", "replace").strip() if as_json else render(snapshot, url)
    print(text, file=out, flush=True)


def _rows(node: ActorStatus | SupervisorStatus, depth: int, now: float) -> Iterator[list[str]]:
    mailbox = "-"
    name = "  " * depth + node.name
    if isinstance(node, ActorStatus):
        mailbox = f"{node.mailbox_depth}/{node.mailbox_capacity}"
    else:
        name += f" ({node.strategy})"
    yield [
        name,
        node.state.value,
        f"{node.restarts_in_window}/{node.restarts_total}",
        _failure(node.last_failure, now),
        mailbox,
        format_duration(node.uptime_seconds),
    ]
    if isinstance(node, SupervisorStatus):
        for child in node.children:
            yield from _rows(child, depth + 1, now)


def _failure(failure: Failure | None, now: float) -> str:
    if failure is None:
        return "-"
    reason = failure.reason
    if len(reason) > _REASON_WIDTH:
        # Cut the middle: the start names the exception, the end the line it came from.
        head = _REASON_WIDTH // 2
        reason = reason[:head] + "..." + reason[-(_REASON_WIDTH - head - 3) :]
    return f"{reason} ({format_duration(now - failure.at)} ago)"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    return lines


def _describe_error(target: str, response: httpx.Response) -> str:
    reason = response.reason_phrase or "error"
    message = f"{target} answered {response.status_code} {reason}"
    if "json" in response.headers.get("content-type", ""):
        try:
            problem = msgspec.json.decode(response.content, type=_Problem)
        except msgspec.DecodeError:
            problem = _Problem()
        found = [part for part in (problem.title, problem.detail) if part and part != reason]
        if found:
            message += ": " + ": ".join(" ".join(part.split()) for part in found)
    if response.status_code in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
        message += f" (pass --api-key KEY, or set {KEY_ENV})"
    return message


def _reason(exc: httpx.HTTPError) -> str:
    """The innermost OS reason (``Connection refused``), else the exception's text."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = re.sub(r"^\[Errno -?\d+\] ", "", " ".join(str(exc).split()))
    return text or type(exc).__name__


def _fail(message: str, code: int) -> int:
    print(f"troupe status: {message}", file=sys.stderr)
    return code
