"""Structured logs: JSON lines from a real server, one per request, and never any content."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from api.http.asgi import ASGIMessage, Receive, Scope, Send
from api.http.logs import (
    AccessLogMiddleware,
    JsonFormatter,
    TextFormatter,
    annotate,
    lifecycle_fields,
)
from api.http.middleware import RequestIdFilter, request_id_var
from runtime.lifecycle import Crashed, Restarted
from tests.server import REPO, Server, free_port, wait_ready

pytestmark = pytest.mark.timeout(180)

SECRET_PROMPT = "zebra-quartz-private-prompt-7731"
API_KEY = "sk-log-test-key-0042"
ADMIN_KEY = "admin-log-secret-0043"
KEYS = {"authorization": f"Bearer {API_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
STANDARD_KEYS = {"ts", "level", "logger", "message", "request_id"}
NO_EOS = {str(token): -100 for token in range(7)}
"""Bias against the special tokens (end of text among them)."""


@contextmanager
def server_with_logs(model_dir: Path, tmp: Path, *args: str) -> Iterator[tuple[Server, Path]]:
    """``troupe serve`` with stderr (the log) and stdout (the banner) kept apart."""
    port = free_port()
    stdout, stderr = tmp / "stdout.txt", tmp / "stderr.log"
    command = [sys.executable, "-m", "api.cli.main", "serve", "--model", str(model_dir)]
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            cwd=REPO,
            stdout=out,
            stderr=err,
            text=True,
            env=dict(os.environ),
        )
    server = Server(process, f"http://127.0.0.1:{port}", stderr)
    try:
        wait_ready(server)
        yield server, stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def parse(log: str) -> list[dict[str, Any]]:
    """Every line of ``log`` as a JSON object (fails on the first line that is not one)."""
    lines = []
    for raw in log.splitlines():
        line = json.loads(raw)
        assert isinstance(line, dict), raw
        assert line.keys() >= STANDARD_KEYS, raw
        lines.append(line)
    return lines


def post(server: Server, path: str, body: object, request_id: str) -> httpx.Response:
    headers = {**KEYS, "x-request-id": request_id}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


def test_a_served_session_logs_json_lines_without_content(model_dir: Path, tmp_path: Path) -> None:
    args = ["--api-keys", API_KEY, "--admin-key", ADMIN_KEY, "--fault-injection"]
    args += ["--audit-path", str(tmp_path / "audit.sqlite")]
    with server_with_logs(model_dir, tmp_path, *args) as (srv, stdout):
        model = httpx.get(srv.url + "/v1/models", headers=KEYS, timeout=10).json()["data"][0]["id"]
        texts = []
        plain = post(
            srv, "/v1/completions",
            # Sampled, but never an end-of-text token: it runs to its 8 tokens.
            {"model": model, "prompt": SECRET_PROMPT, "max_tokens": 8, "logit_bias": NO_EOS},
            "log-plain",
        )  # fmt: skip
        texts.append(plain.json()["choices"][0]["text"])
        chat = {"model": model, "messages": [{"role": "user", "content": SECRET_PROMPT}],
                "max_tokens": 8, "stream": True}  # fmt: skip
        with httpx.stream(
            "POST", srv.url + "/v1/chat/completions", json=chat,
            headers={**KEYS, "x-request-id": "log-stream"}, timeout=60,
        ) as stream:  # fmt: skip
            streamed = [line for line in stream.iter_lines() if line.startswith("data: {")]
        texts.append(
            "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in streamed
            )
        )
        bad = {"model": model, "prompt": SECRET_PROMPT, "max_tokens": -1}
        assert post(srv, "/v1/completions", bad, "log-invalid").status_code == 422
        assert post(srv, "/v1/nowhere", {}, "log-missing").status_code == 404
        crash = {"kind": "engine_crash", "after_tokens": 1}
        fault = httpx.post(srv.url + "/admin/faults", json=crash, headers=ADMIN, timeout=10)
        assert fault.is_success
        retried = post(
            srv, "/v1/completions", {"model": model, "prompt": SECRET_PROMPT, "max_tokens": 4},
            "log-retried",
        )  # fmt: skip
        assert retried.status_code == 200
        texts.append(retried.json()["choices"][0]["text"])
        assert srv.stop(signal.SIGTERM) == 0
        log = srv.log()
        banner = stdout.read_text()
    lines = parse(log)
    everything = log + banner
    for secret in (SECRET_PROMPT, API_KEY, ADMIN_KEY, "Traceback"):
        assert secret not in everything, secret
    telling = [text for text in texts if len(text.strip()) >= 8]  # long enough to be telling
    assert telling
    for text in telling:
        assert text not in log
    answered = [line["request_id"] for line in lines if line.get("event") == "request"]
    named = ["log-plain", "log-stream", "log-invalid", "log-missing", "log-retried"]
    assert sorted(r for r in answered if r.startswith("log-")) == sorted(named)  # one each
    requests = {line["request_id"]: line for line in lines if line.get("event") == "request"}
    ok = requests["log-plain"]
    assert (ok["status"], ok["endpoint"], ok["model"], ok["finish_reason"]) == (
        200, "completions", model, "length",
    )  # fmt: skip
    assert (ok["prompt_tokens"] > 0, ok["completion_tokens"], ok["method"]) == (True, 8, "POST")
    assert ok["duration_ms"] >= ok["ttft_ms"] > 0
    assert requests["log-stream"]["endpoint"] == "chat" and requests["log-stream"]["status"] == 200
    assert (requests["log-invalid"]["status"], requests["log-invalid"]["error_type"]) == (
        422, "invalid_field",
    )  # fmt: skip
    assert requests["log-missing"]["status"] == 404
    # The engine process died under it: the generation actor sent it to the next one.
    assert any(
        line.get("event") in {"request_retried", "request_resumed"}
        and line["request_id"].startswith("log-retried.")
        for line in lines
    )
    events = [(line.get("event"), line.get("path")) for line in lines]
    for expected in (
        ("actor_started", "troupe/generation"),
        ("actor_crashed", "troupe/engine"),  # the engine process, which died
        ("actor_restarted", "troupe/engine"),
        ("actor_stopped", "troupe/generation"),
        ("actor_stopped", "troupe/metrics"),
    ):
        assert expected in events, expected
    server_events = [line["event"] for line in lines if str(line.get("event")).startswith("server")]
    assert server_events == [
        "server_started",
        "server_draining",
        "server_drained",
        "server_stopped",
    ]
    outside = [line for line in lines if line.get("event") in ("actor_started", "server_started")]
    assert all(line["request_id"] is None for line in outside)


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("troupe.test", logging.WARNING, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    RequestIdFilter().filter(made)
    return made


def fail_quoting_the_prompt() -> None:
    raise ValueError(SECRET_PROMPT)  # an exception message may quote the prompt


def test_the_json_formatter_keeps_fields_and_drops_tracebacks() -> None:
    try:
        fail_quoting_the_prompt()
    except ValueError:
        failed = record("it failed", event="x", status=500, exc_info=sys.exc_info())
    token = request_id_var.set("req-9")
    try:
        tagged = record("tagged")
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(failed))
    assert (line["level"], line["logger"], line["message"]) == (
        "warning",
        "troupe.test",
        "it failed",
    )
    assert (line["event"], line["status"], line["request_id"]) == ("x", 500, None)
    assert line["error"].startswith("ValueError (in tests.test_logs.")
    formatted = JsonFormatter().format(failed) + TextFormatter().format(failed)
    assert SECRET_PROMPT not in formatted and "Traceback" not in formatted
    assert json.loads(JsonFormatter().format(tagged))["request_id"] == "req-9"
    text = TextFormatter().format(record("done", event="request", path="/v1/x y"))
    assert text.endswith('done event=request path="/v1/x y"')


class Kept(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_field_named_like_a_record_attribute_cannot_break_the_request_line() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        annotate(scope, thread="mine", model="tiny")
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def receive() -> ASGIMessage:
        return {"type": "http.disconnect"}

    async def send(message: ASGIMessage) -> None:
        pass

    logger, kept = logging.getLogger("troupe.http"), Kept()
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        scope: Scope = {"type": "http", "method": "GET", "path": "/x"}
        anyio.run(AccessLogMiddleware(app), scope, receive, send)
    finally:
        logger.removeHandler(kept)
        logger.setLevel(logging.NOTSET)
    (line,) = kept.records
    assert (line.__dict__["thread_field"], line.__dict__["model"]) == ("mine", "tiny")
    assert line.__dict__["status"] == 204


def test_lifecycle_events_become_log_fields() -> None:
    crashed = Crashed(path="troupe/generation", at=1.0, reason="EngineCrashed (in m.f:1)")
    assert lifecycle_fields(crashed) == {
        "event": "actor_crashed",
        "path": "troupe/generation",
        "reason": "EngineCrashed (in m.f:1)",
    }
    restarted = Restarted(path="troupe/x", at=2.0, incarnation=2, restarts_total=1, delay=0.0)
    assert lifecycle_fields(restarted)["event"] == "actor_restarted"


def test_warnings_and_uncaught_exceptions_are_json_lines_without_paths_or_text() -> None:
    script = f"""
import threading, warnings
from api.http.logs import configure_logging
configure_logging("info", "json")
warnings.warn("see /home/alice/notes/{SECRET_PROMPT}.txt")
worker = threading.Thread(target=lambda: 1 / 0, name="worker")
worker.start()
worker.join()
raise ValueError("{SECRET_PROMPT}")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = parse(done.stderr)
    assert [line.get("event") for line in lines] == [
        "warning",
        "uncaught_exception",
        "uncaught_exception",
    ]
    assert lines[0]["category"] == "UserWarning" and "/home/alice" not in done.stderr
    assert lines[1]["thread_name"] == "worker" and lines[1]["error"].startswith("ZeroDivisionError")
    assert lines[2]["error"].startswith("ValueError")
    assert "Traceback" not in done.stderr
    assert done.stderr.count(SECRET_PROMPT) == 1  # the warning's file name, not the exception
