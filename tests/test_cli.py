"""The troupe command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from actors.model import PRESETS
from api.cli.main import MODEL_SIZES
from api.cli.serve import hypercorn_config
from api.config.settings import Settings

pytestmark = pytest.mark.timeout(60)


def troupe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args], capture_output=True, text=True, check=False
    )


def test_serve_lists_every_configuration_problem_and_exits_2() -> None:
    result = troupe(
        "serve", "--port", "70000", "--chat-timeout", "-1", "--model", "/nonexistent/model"
    )
    assert result.returncode == 2
    for setting in ("port", "chat_timeout", "model"):
        assert setting in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_readable_error_with_a_non_zero_exit() -> None:
    result = troupe("dance")
    assert result.returncode == 2
    assert "invalid choice: 'dance'" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_model_offers_exactly_the_presets() -> None:
    # The CLI lists the sizes itself so that parsing never imports MLX.
    assert tuple(PRESETS) == MODEL_SIZES


def test_make_model_help_names_the_sizes_and_the_force_flag() -> None:
    result = troupe("make-model", "--help")
    assert result.returncode == 0
    assert "{tiny,small}" in result.stdout
    assert "--force" in result.stdout


def test_idle_connections_outlive_the_clients_own_keep_alive() -> None:
    """A client's pooled connection is never closed under it as it sends (httpx: 5 s)."""
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None and hypercorn_config(Settings()).keep_alive_timeout > expiry
    assert hypercorn_config(Settings(keep_alive_timeout=2.5)).keep_alive_timeout == 2.5
