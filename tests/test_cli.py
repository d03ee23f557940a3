"""The troupe command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def troupe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], capture_output=True, text=True, check=False
    )


def test_serve_says_it_is_not_ready_yet_and_succeeds() -> None:
    result = troupe("serve")
    assert result.returncode == 0
    assert "not ready yet" in result.stdout


def test_unknown_command_is_a_readable_error_with_a_non_zero_exit() -> None:
    result = troupe("dance")
    assert result.returncode == 2
    assert "invalid choice: 'dance'" in result.stderr
    assert "Traceback" not in result.stderr
