"""``troupe status`` against a real HTTP server on a thread, serving real status structs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from api.cli.main import main
from api.cli.status_table import format_duration
from runtime.status import ActorStatus, Failure, NodeState, SupervisorStatus, SystemStatus

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
KEY = "s3cret-status-key"
NOW = 1_800_000_000.0


def actor(name: str, path: str, **changes: object) -> ActorStatus:
    healthy = ActorStatus(
        name=name,
        path=path,
        state=NodeState.RUNNING,
        restart="permanent",
        incarnation=1,
        restarts_in_window=0,
        restarts_total=0,
        last_failure=None,
        mailbox_depth=0,
        mailbox_capacity=1024,
        dead_letters=0,
        uptime_seconds=3725.0,
    )
    return msgspec.structs.replace(healthy, **changes)


def supervisor(
    name: str, path: str, children: list[ActorStatus | SupervisorStatus]
) -> SupervisorStatus:
    return SupervisorStatus(
        name=name,
        path=path,
        state=NodeState.RUNNING,
        strategy="one_for_one",
        incarnation=1,
        intensity=5,
        period_seconds=10.0,
        restarts_in_window=0,
        restarts_total=0,
        last_failure=None,
        uptime_seconds=90061.0,
        children=children,
    )


STATUS = SystemStatus(
    at=NOW,
    root=supervisor(
        "troupe",
        "troupe",
        [
            actor(
                "kvcache",
                "troupe/kvcache",
                restarts_in_window=1,
                restarts_total=3,
                mailbox_depth=2,
                last_failure=Failure(
                    reason="RuntimeError (in actors.kvcache.actor.KVCacheActor.handle:123)",
                    at=NOW - 125,
                ),
                uptime_seconds=4.25,
            ),
            supervisor(
                "engine", "troupe/engine", [actor("generation", "troupe/engine/generation")]
            ),
        ],
    ),
    dead_letters=7,
    events_published=42,
    events_dropped=0,
    failure=None,
)
PLAIN = msgspec.json.encode(STATUS)
WITH_CACHE = msgspec.json.encode(
    msgspec.json.decode(PLAIN) | {"cache": {"breaker": {"state": "open"}}}
)
PROBLEM = json.dumps(
    {
        "type": "https://mlx-troupe.dev/problems/unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the supervisor is restarting",
    }
).encode()


class Handler(BaseHTTPRequestHandler):
    """Routes by the first path segment; the rest must be /v1/supervisor."""

    server: StatusServer

    def do_GET(self) -> None:
        route, _, rest = self.path.lstrip("/").partition("/")
        if rest != "v1/supervisor":
            self.answer(404, "text/plain", b"not here")
        elif route == "ok":
            self.answer(200, "application/json", WITH_CACHE)
        elif route == "plain":
            self.answer(200, "application/json", PLAIN)
        elif route == "down":
            self.answer(503, "application/problem+json", PROBLEM)
        elif route == "garbage":
            self.answer(200, "application/json", b"<html>surprise</html>")
        elif route == "auth":
            if self.headers.get("authorization") == f"Bearer {KEY}":
                self.answer(200, "application/json", PLAIN)
            else:
                self.answer(401, "application/problem+json", b'{"detail": "a key is required"}')
        elif route == "flaky":
            self.server.hits += 1
            if self.server.hits % 2:
                self.answer(200, "application/json", PLAIN)
            else:
                self.answer(503, "application/problem+json", PROBLEM)
        elif route == "slow":
            self.server.release.wait(10)
            self.answer(200, "application/json", PLAIN)

    def answer(self, code: int, kind: str, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up first (the timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0
    release = threading.Event()


@pytest.fixture
def server() -> Iterator[str]:
    """The base URL of a real HTTP server serving the routes of :class:`Handler`."""
    httpd = StatusServer(("127.0.0.1", 0), Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["status", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(header: str, lines: list[str]) -> list[dict[str, str]]:
    """Cut each line at the columns' starts in ``header`` (names are separated by 2+ spaces)."""
    names = [name for name in header.split("  ") if name.strip()]
    starts = [header.index(name.strip()) for name in names]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {name.strip(): line[a:b].rstrip() for name, (a, b) in zip(names, bounds, strict=True)}
        for line in lines
    ]


def troupe(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_the_table_shows_the_tree_indented_with_every_column(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys, "--url", f"{server}/ok")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{server}/ok at ")
    assert lines[0].endswith(": 7 dead letters, 42 events (0 dropped)")
    rows = table(lines[2], lines[3:-2])
    assert [row["ACTOR"] for row in rows] == [
        "troupe (one_for_one)",
        "  kvcache",
        "  engine (one_for_one)",
        "    generation",
    ]
    kvcache, generation = rows[1], rows[3]
    assert kvcache["STATE"] == "running"
    assert kvcache["RESTARTS"] == "1/3"
    assert (
        kvcache["LAST FAILURE"] == "RuntimeError (in actors....acheActor.handle:123) (2m 05s ago)"
    )
    assert (kvcache["MAILBOX"], kvcache["UPTIME"]) == ("2/1024", "4.2s")
    assert (generation["LAST FAILURE"], generation["MAILBOX"]) == ("-", "0/1024")
    assert generation["UPTIME"] == "1h 02m"
    assert (rows[0]["MAILBOX"], rows[0]["UPTIME"]) == ("-", "1d 01h")
    assert lines[-2] == ""
    assert lines[-1] == "cache breaker: open"


def test_a_response_without_a_cache_object_has_no_breaker_line(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = status(capsys, "--url", f"{server}/plain/")
    assert code == 0
    assert "kvcache" in out and "breaker" not in out


def test_json_prints_the_body_as_received(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status(capsys, "--url", f"{server}/ok", "--json")
    assert code == 0
    assert json.loads(out) == json.loads(WITH_CACHE)


def test_an_error_status_with_a_problem_body_is_one_line_and_exit_1(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys, "--url", f"{server}/down")
    assert (code, out) == (1, "")
    assert err == (
        f"troupe status: {server}/down/v1/supervisor answered 503 Service Unavailable: "
        "the supervisor is restarting\n"
    )


def test_a_body_that_is_not_a_status_is_an_error(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = status(capsys, "--url", f"{server}/garbage")
    assert code == 1
    assert "did not answer with a supervisor status" in err
    assert len(err.splitlines()) == 1


def test_a_wrong_path_is_a_readable_404(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = status(capsys, "--url", f"{server}/ok/extra")
    assert code == 1
    assert "answered 404 Not Found" in err


def test_the_key_comes_from_the_flag_or_the_environment_and_is_never_shown(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TROUPE_API_KEYS", raising=False)
    code, _, err = status(capsys, "--url", f"{server}/auth")
    assert code == 1
    assert "answered 401 Unauthorized: a key is required (pass --api-key KEY" in err
    assert status(capsys, "--url", f"{server}/auth", "--api-key", KEY)[0] == 0
    assert status(capsys, "--url", f"{server}/auth", "--admin-key", KEY)[0] == 0
    monkeypatch.setenv("TROUPE_API_KEYS", f"{KEY},another")
    code, out, err = status(capsys, "--url", f"{server}/auth")
    assert code == 0
    assert KEY not in out + err


def test_a_slow_server_times_out_readably(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, _, err = status(capsys, "--url", f"{server}/slow", "--timeout", "0.3")
    assert code == 1
    assert err == f"troupe status: {server}/slow/v1/supervisor: no answer within 0.3 s\n"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "localhost:8000"],
        ["--url", "http://"],
        ["--url", "http://127.0.0.1:abc"],
        ["--url", "http://127.0.0.1:99999"],
        ["--watch", "0"],
        ["--timeout", "-1"],
        ["--api-key", "kéy"],
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("troupe status: ") and len(err.splitlines()) == 1


def test_a_refused_connection_exits_1_with_one_readable_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    process = troupe("status", "--url", f"http://127.0.0.1:{port}")
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out) == (1, "")
    assert err == (
        f"troupe status: cannot connect to http://127.0.0.1:{port}: Connection refused "
        "(is troupe serve running?)\n"
    )


def test_watch_refreshes_shows_errors_and_ends_cleanly_on_ctrl_c(server: str) -> None:
    process = troupe("status", "--url", f"{server}/flaky", "--watch", "0.05")
    assert process.stdout is not None
    tables = 0
    while tables < 2:  # every other answer is a 503, which watch reports and survives
        line = process.stdout.readline()
        assert line, "troupe status --watch ended early"
        tables += line.startswith("ACTOR")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in err
    assert "answered 503 Service Unavailable: the supervisor is restarting" in err


def test_watch_stops_at_once_when_the_first_fetch_fails(server: str) -> None:
    process = troupe("status", "--url", f"{server}/down", "--watch", "0.05")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert len(err.splitlines()) == 1


def test_durations_are_short_and_readable() -> None:
    assert [
        format_duration(s) for s in (None, -1, 0.25, 9.94, 59, 61, 3599, 3600, 86399, 90061)
    ] == [
        "-",
        "0.0s",
        "0.2s",
        "9.9s",
        "59s",
        "1m 01s",
        "59m 59s",
        "1h 00m",
        "23h 59m",
        "1d 01h",
    ]
