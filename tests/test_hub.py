"""Hub downloads against a fake Hub on loopback: retried with backoff, never half there.

huggingface_hub reads ``HF_ENDPOINT`` when it is imported, so each download
runs in a child process (a server, or a short Python) pointed at the fake.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fake_hub import fake_hub, repo_of
from tests.server import REPO, running_server

pytestmark = pytest.mark.timeout(180)

REPO_ID = "test-owner/tiny"


def hub_env(endpoint: str, home: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


DOWNLOAD = """
import json, random
from actors.model.hub import HubRetry, download
delays = []
try:
    path = str(download({repo!r}, HubRetry(attempts={attempts}, initial=0.05),
                        sleep=delays.append, rng=random.Random(0)))
except Exception as exc:
    path = None
    error = type(exc).__name__
else:
    error = None
print(json.dumps({{"path": path, "delays": delays, "error": error}}))
"""


def download(repo: str, attempts: int, env: dict[str, str]) -> dict[str, object]:
    result = run_python(DOWNLOAD.format(repo=repo, attempts=attempts), env)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_a_busy_hub_is_retried_with_growing_jittered_delays(
    model_dir: Path, tmp_path: Path
) -> None:
    script = repo_of(model_dir, REPO_ID)
    script.fail_next["revision"] = 2
    with fake_hub(script) as url:
        answer = download(REPO_ID, 4, hub_env(url, tmp_path / "hf"))
    assert answer["error"] is None
    delays = answer["delays"]
    assert isinstance(delays, list) and len(delays) == 2
    assert 0 <= delays[0] <= 0.05 and 0 <= delays[1] <= 0.1  # initial x 2^n, jittered
    assert script.seen["revision"] == 3
    snapshot = Path(str(answer["path"]))
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (snapshot / name).read_bytes() == (model_dir / name).read_bytes()


def test_a_missing_repository_is_not_retried(model_dir: Path, tmp_path: Path) -> None:
    script = repo_of(model_dir, REPO_ID)
    with fake_hub(script) as url:
        answer = download("test-owner/absent", 4, hub_env(url, tmp_path / "hf"))
    assert answer["error"] == "RepositoryNotFoundError"
    assert answer["delays"] == []
    assert script.seen["missing"] == 1


def test_weights_that_never_arrive_leave_no_model_behind(model_dir: Path, tmp_path: Path) -> None:
    script = repo_of(model_dir, REPO_ID)
    script.always_fail.add("model.safetensors")
    home = tmp_path / "hf"
    with fake_hub(script) as url:
        answer = download(REPO_ID, 2, hub_env(url, home))
    assert answer["error"] is not None
    snapshots = list(home.glob("hub/models--test-owner--tiny/snapshots/*"))
    assert all(not (snapshot / "model.safetensors").exists() for snapshot in snapshots)
    weights = hashlib.sha1((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert not list(home.glob(f"hub/models--test-owner--tiny/blobs/{weights}"))


def test_serve_loads_a_hub_model_once_the_hub_answers(model_dir: Path, tmp_path: Path) -> None:
    script = repo_of(model_dir, REPO_ID)
    script.fail_next["revision"] = 2
    with (
        fake_hub(script) as url,
        running_server(
            None, tmp_path, "--model", REPO_ID, env=hub_env(url, tmp_path / "hf")
        ) as server,
    ):
        body = {"model": REPO_ID, "prompt": "hello", "max_tokens": 3, "temperature": 0}
        answered = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert answered.status_code == 200, answered.text
    assert script.seen["revision"] >= 3
    assert "hub_retry" in server.log() or "try 2 of" in server.log()
