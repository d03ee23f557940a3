"""``serve run docs/ray-serve.yaml``: the shipped Serve config file starts the same replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server import REPO, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
STARTUP = 240.0


def test_the_example_config_serves_through_serve_run(model_dir: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "docs" / "ray-serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    application = config["applications"][0]
    application["args"].update({"model": str(model_dir), "replica-cpus": 0.5})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve-run.log"
    serve = Path(sys.executable).with_name("serve")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(serve), "run", str(path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        replicas = wait_for_replicas(url, process, log_path, expected=2)
        assert len(replicas) == 2
    finally:
        process.send_signal(signal.SIGINT)  # serve run's Ctrl-C: shuts Serve down
        try:
            assert process.wait(60) in (0, -signal.SIGINT, 130)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def wait_for_replicas(
    url: str, process: subprocess.Popen[bytes], log: Path, expected: int
) -> set[str]:
    """Chat until ``expected`` distinct replicas have answered (all of them came up).

    Each prompt is new (one prompt would stay on one replica: prefix affinity),
    and ties between idle replicas are broken at random.
    """
    deadline = time.monotonic() + STARTUP
    seen: set[str] = set()
    asked = 0
    while len(seen) < expected:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        asked += 1
        messages = [{"role": "user", "content": f"Question {asked}"}]
        body = {"model": "tiny", "messages": messages, "max_tokens": 2}
        try:
            answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        except httpx.TransportError:
            time.sleep(0.5)  # not listening yet: a process we do not control
            continue
        if answer.status_code == 200:
            seen.add(answer.headers["x-troupe-replica"])
        else:
            time.sleep(0.5)
    return seen
