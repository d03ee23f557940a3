"""docs/configuration.md: generated from the settings, committed, and never stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import api.config.flags
import api.config.reference
from api.config.reference import REGENERATE, reference_markdown
from api.config.settings import FIELDS, SECRET_SETTINGS, Settings, env_name, flag_name
from tests.server import REPO

pytestmark = pytest.mark.timeout(30)

PAGE = REPO / "docs" / "configuration.md"
SECRET = "sk-very-secret-value"


def rows() -> dict[str, list[str]]:
    """The table's cells by setting name (the first code span of the first cell)."""
    found: dict[str, list[str]] = {}
    for line in reference_markdown().splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("| ").split(" | ")]
            found[cells[0].split("`")[1]] = cells
    return found


def test_the_committed_page_is_the_generated_one() -> None:
    committed = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    assert committed == reference_markdown(), (
        f"docs/configuration.md is stale; regenerate it: {REGENERATE}"
    )


def test_every_setting_has_a_row_with_its_flag_and_variable_in_field_order() -> None:
    table = rows()
    assert list(table) == list(FIELDS)
    for name, (setting, *_rest, description) in table.items():
        assert f"`{flag_name(name)}" in setting and f"`{env_name(name)}`" in setting
        assert description and "``" not in description  # reST literals became Markdown


def test_types_and_defaults_read_as_people_write_them() -> None:
    table = rows()
    assert table["port"][1:3] == ["int", "`8000`"]
    assert table["model"][1:3] == ["str or unset", "unset"]
    assert table["log_format"][1:3] == ["one of: json, text", "`json`"]
    assert table["cors_origins"][1:3] == ["list of str", "`[]`"]
    assert table["tracing"][1:3] == ["bool", "`false`"]
    assert table["cache_max_bytes"][2] == "`2147483648` (2 GiB)"
    assert "`--no-tracing`" in table["tracing"][0]
    assert r"`--blas auto\|bundled\|PATH`" in table["blas"][0]  # a pipe would split the cell


def test_the_secrets_show_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    table = rows()
    assert {name: table[name][2] for name in SECRET_SETTINGS} == {
        "api_keys": "`[]`",
        "admin_key": "(none)",
    }
    # Defaults that hold secrets, as a later version might ship: still not shown.
    laden = Settings(api_keys=[SECRET], admin_key=SECRET, port=8123)
    monkeypatch.setattr(api.config.reference, "Settings", lambda: laden)
    monkeypatch.setattr(api.config.flags, "Settings", lambda: laden)
    page = reference_markdown()
    assert "`8123`" in page  # the stand-in defaults were read
    assert SECRET not in page


def test_the_page_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = reference_markdown()
    monkeypatch.setenv("TROUPE_API_KEYS", SECRET)
    monkeypatch.setenv("TROUPE_PORT", "8123")
    assert reference_markdown() == before


def run_reference(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.config.reference", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=20,
        check=False,
    )


def test_the_command_prints_the_page_and_checks_a_file(tmp_path: Path) -> None:
    printed = run_reference()
    assert (printed.returncode, printed.stdout) == (0, reference_markdown())
    fresh = tmp_path / "fresh.md"
    fresh.write_text(reference_markdown(), encoding="utf-8")
    assert run_reference("--check", str(fresh)).returncode == 0
    stale = tmp_path / "stale.md"
    stale.write_text(reference_markdown().replace("TCP port", "UDP port"), encoding="utf-8")
    result = run_reference("--check", str(stale))
    assert result.returncode == 1 and result.stdout == ""
    assert "out of date" in result.stderr and "make docs" in result.stderr
    assert "-| `port`" in result.stderr and "+| `port`" in result.stderr
    missing = run_reference("--check", str(tmp_path / "absent.md"))
    assert missing.returncode == 1 and "cannot be read" in missing.stderr
