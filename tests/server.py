"""Run ``troupe serve`` as a real subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0


PORTS_FLOOR = 10_000
"""The lowest port the tests hand out (well above the privileged and well-known ones)."""


def _ports_of_this_worker() -> range:
    """The ports this test process may hand out: its own share, below the ephemeral range.

    The suite runs in parallel processes (pytest-xdist): ports taken from the
    kernel's ephemeral range could be handed to two of them between a probe
    and the server's bind, or to a client's outgoing connection. Each worker
    gets a slice of the ports below that range, which the kernel never hands
    out by itself.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; other systems use 49152 and up
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    share = (low - PORTS_FLOOR) // max(count, 1)
    start = PORTS_FLOOR + index * share
    return range(start, start + share)


def free_port() -> int:
    """A port nothing listens on right now, from this worker's own share."""
    ports = _ports_of_this_worker()
    for _ in range(200):
        port = random.choice(ports)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken by something else on this machine
            return port
    raise RuntimeError(f"no free port in {ports}")


@dataclass
class Server:
    """A running server process."""

    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@contextmanager
def running_server(
    model_dir: Path | None,
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[Server]:
    """Start ``troupe serve`` with ``args``; stop it (SIGTERM, then SIGKILL) afterwards.

    Without ``model_dir`` it serves the embedded default (set ``TROUPE_CACHE_DIR``
    in ``env`` to keep the generated model out of the user's cache).
    """
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "api.cli.main",
        "serve",
        *(("--model", str(model_dir)) if model_dir is not None else ()),
        "--port",
        str(port),
        *args,
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server, startup_timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_ready(server: Server, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll readiness until the server answers 200 (startup is a real model load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a process we do not control; no event to wait on
    raise AssertionError(f"the server was not ready in time:\n{server.log()}")
