"""schemathesis, a fuzzer nobody here wrote, against a real server and its /openapi.json.

Every operation of the served document is generated and sent (examples,
coverage and fuzzing phases, ``--checks all``) with the API and admin keys
supplied, the served model's name in the document and a low token limit so
that generation stays quick. Zero failures is the bar: the document and the
server must agree on statuses, content types, schemas, methods and auth.

The fault switch stays off on this server (its operation is checked as the
documented 404): fuzzing it would stall or crash the actors the other
operations are being checked against. For the same reason the run-time
settings edit is not fuzzed (a generated deadline of a microsecond would turn
every later completion into a 504), nor the live audit stream, which by design
never ends while the server runs; tests/test_console_api.py covers both.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import running_server

pytestmark = pytest.mark.timeout(600)

CONFIG = Path(__file__).with_name("schemathesis.toml")
API_KEY = "contract-api-key"
ADMIN_KEY = "contract-admin-key"
SEED = int(os.environ.get("TROUPE_CONTRACT_SEED", "20261202"))
"""Fixed, so a failure reproduces; set ``TROUPE_CONTRACT_SEED`` to explore others."""


def test_schemathesis_finds_no_failure_in_any_operation(
    model_dir: Path, tmp_path: Path, long_run: bool, figures: dict[str, object]
) -> None:
    flags = ("--api-keys", API_KEY, "--admin-key", ADMIN_KEY, "--max-tokens-limit", "16")
    audit = ("--audit-path", str(tmp_path / "audit.db"))
    # The BLAS `troupe serve` picks (MKL where installed): nothing here compares
    # outputs across batch shapes, and it halves the run (the suite's default is
    # the reference BLAS, whose results do not depend on the batch).
    fast = {"TROUPE_BLAS": "auto"}
    with running_server(model_dir, tmp_path, *flags, *audit, env=fast) as server:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            server.url + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "300" if long_run else "15",
            # Schemathesis's own default (10 s) fails a request that a busy
            # machine is merely slow to answer (a 2,048-input embedding); a
            # server that hangs is still caught by this test's own timeout.
            "--request-timeout",
            "120",
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--exclude-name",
            "PATCH /admin/settings",
            # Its body is TOML, a grammar a schema cannot state (any string is
            # schema-valid), and it replaces the server's keys: it has its own
            # tests (tests/test_tenancy_share.py), like the settings edit above.
            "--exclude-name",
            "PUT /admin/tenants",
            "--exclude-name",
            "GET /admin/audit-logs/stream",
        ]
        env = {
            **os.environ,
            "TROUPE_CONTRACT_API_KEY": API_KEY,
            "TROUPE_CONTRACT_ADMIN_KEY": ADMIN_KEY,
        }
        run = subprocess.run(  # in tmp_path: its example database stays out of the tree
            command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540, check=False
        )
        assert "Traceback" not in server.log()
    report = run.stdout + run.stderr
    counts = re.search(r"(\d+) generated(?:, (\d+) found)?", report)
    assert counts is not None, report
    figures.update(cases=int(counts.group(1)), failures=int(counts.group(2) or 0), seed=SEED)
    assert run.returncode == 0, report
    # Every operation but the three left out was tested.
    assert "24/24" in report or "Tested: 24" in report, report
