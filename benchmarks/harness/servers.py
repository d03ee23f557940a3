"""The servers compared: started as subprocesses, waited for, and always stopped.

Each server runs in its own session (so its own process group): a Ctrl-C in
the terminal reaches only the harness, which then stops every group it
started, SIGTERM first and SIGKILL after a grace period, so no server outlives
the run. Both servers get the same environment, including the same
``LD_PRELOAD`` BLAS (or none), and the BLAS each one actually mapped is read
back from ``/proc/PID/maps``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
import psutil

STOP_GRACE: Final = 30.0
"""Seconds a server gets to exit after SIGTERM before its group is killed."""


@dataclass(frozen=True)
class Batching:
    """The batching options both servers are started with (stated in the report)."""

    decode: int = 32
    """Sequences decoded together (troupe ``--max-running``, mlx_lm ``--decode-concurrency``)."""
    prompt: int = 8
    """Prompts prefilled together (mlx_lm ``--prompt-concurrency``; troupe's engine: 8)."""
    prefill_step: int = 2048
    """Tokens per prefill step of mlx_lm (``--prefill-step-size``); troupe's engine: 256."""
    prompt_cache: int = 10
    """Prompts mlx_lm caches (``--prompt-cache-size``); troupe: ``--cache-max-entries`` 32."""


@dataclass(frozen=True)
class ServerKind:
    """How to start one kind of server and how to tell it is ready."""

    key: str
    label: str
    ready_path: str
    command: Callable[[str, int, Batching], list[str]]
    fixed_model_name: str | None = None
    """The ``model`` to send; ``None``: the first id of ``GET /v1/models``."""


def _troupe(model: str, port: int, batching: Batching) -> list[str]:
    return [
        *(sys.executable, "-m", "api.cli", "serve", "--model", model, "--port", str(port)),
        *("--max-running", str(batching.decode)),
    ]


def _troupe_thread(model: str, port: int, batching: Batching) -> list[str]:
    return [*_troupe(model, port, batching), "--engine", "thread"]


def _mlx_lm(model: str, port: int, batching: Batching) -> list[str]:
    return [
        *(sys.executable, "-m", "mlx_lm.server", "--model", model, "--port", str(port)),
        *("--decode-concurrency", str(batching.decode)),
        *("--prompt-concurrency", str(batching.prompt)),
        *("--prefill-step-size", str(batching.prefill_step)),
        *("--prompt-cache-size", str(batching.prompt_cache)),
    ]


def _instant(model: str, port: int, batching: Batching) -> list[str]:
    return [sys.executable, "-m", "benchmarks.harness.instant", "--port", str(port)]


KINDS: Final = {
    "troupe": ServerKind("troupe", "mlx-troupe", "/health/ready", _troupe),
    # The engine on a thread of the server's process (the default is a child process).
    "troupe_thread": ServerKind(
        "troupe_thread", "mlx-troupe (engine thread)", "/health/ready", _troupe_thread
    ),
    "mlx_lm": ServerKind(
        "mlx_lm", "mlx_lm.server", "/health", _mlx_lm, fixed_model_name="default_model"
    ),
    "instant": ServerKind("instant", "instant", "/health", _instant),
}


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerFailed(RuntimeError):
    """A server exited early or was not ready in time."""


@dataclass
class ManagedServer:
    """One server process this harness started (or a URL it was given)."""

    kind: ServerKind
    url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)
    model_name: str = ""

    @property
    def pid(self) -> int | None:
        """The server's process id, when this harness started it."""
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        """Poll the readiness path until it answers 200 (a model load takes seconds)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerFailed(
                        f"{self.kind.label} exited with status {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(self.url + self.kind.ready_path).status_code == 200:
                        self.model_name = self._model_name(client)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)  # polling a process we do not control; no event to wait on
        raise ServerFailed(
            f"{self.kind.label} was not ready in {timeout:.0f} s:\n{self.log_tail()}"
        )

    def _model_name(self, client: httpx.Client) -> str:
        if self.kind.fixed_model_name is not None:
            return self.kind.fixed_model_name
        try:
            data = client.get(self.url + "/v1/models").json()["data"]
            return str(data[0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return "default"

    def cpu_seconds(self) -> float | None:
        """CPU seconds of the server so far, its child processes included (``None``: unknown).

        mlx-troupe runs its engine in a child process: counting only the server's
        own process would leave out the work that generates the tokens.
        Children that ended and were reaped count through ``children_*``.
        """
        if self.pid is None:
            return None
        try:
            process = psutil.Process(self.pid)
            times = process.cpu_times()
            children = process.children(recursive=True)
        except psutil.Error:
            return None
        total = times.user + times.system + times.children_user + times.children_system
        for child in children:
            try:
                child_times = child.cpu_times()
            except psutil.Error:  # it ended between the listing and the reading
                continue
            total += child_times.user + child_times.system
        return float(total)

    def blas(self) -> list[str]:
        """The BLAS libraries the server and its child processes have mapped (Linux), by name."""
        if self.pid is None:
            return []
        try:
            pids = [self.pid, *(c.pid for c in psutil.Process(self.pid).children(recursive=True))]
        except psutil.Error:
            pids = [self.pid]
        names: set[str] = set()
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            mapped = (line.split()[-1] for line in maps.splitlines() if "/" in line)
            names |= {path.rsplit("/", 1)[-1] for path in mapped}
        return sorted(name for name in names if "blas" in name.lower() or "mkl_rt" in name)

    def stop(self) -> int | None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_GRACE)
        # Anything left in the group (the server's own children) goes too.
        _signal_group(process.pid, signal.SIGKILL)
        return process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, sig)


def start_server(
    kind: ServerKind,
    model: str,
    batching: Batching,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    cwd: Path | None = None,
) -> ManagedServer:
    """Start ``kind`` on a free loopback port in its own process group (not yet ready).

    ``cwd``: where it runs (``python -m`` imports from there first); this process's by default.
    """
    port = free_port()
    command = kind.command(model, port, batching)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{kind.key}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return ManagedServer(kind, f"http://127.0.0.1:{port}", process, log_path, command)


def attach(url: str, name: str) -> ManagedServer:
    """A server given by URL: measured, never started or stopped here.

    Named after a known kind (``troupe=URL``, ``mlx_lm=URL``), it is treated as
    one (readiness path, model name, and the targets compare it).
    """
    known = KINDS.get(name)
    if known is not None:
        kind = dataclasses.replace(known, command=lambda *_: [])
    else:
        kind = ServerKind(name, name, "/v1/models", lambda *_: [])
    return ManagedServer(kind, url.rstrip("/"))


def server_environment(preload: str | None) -> dict[str, str]:
    """The environment every started server gets: this one, with ``preload`` or none."""
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    # troupe serve would otherwise pick (and preload) a BLAS of its own.
    env["TROUPE_BLAS"] = preload or "bundled"
    # Servers log to files; unbuffered output keeps the logs current for errors.
    env["PYTHONUNBUFFERED"] = "1"
    return env
