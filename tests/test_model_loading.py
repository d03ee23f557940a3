"""The loader's checks of a model directory and its errors: every problem named, no paths."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.model import (
    ModelLoadError,
    load_model,
    validate_model_dir,
)
from actors.model.embedded import MODEL_FILES

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_dir(directory: Path, files: dict[str, str]) -> Path:
    """A model directory holding ``files`` (names to text; validation reads no weights)."""
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def load_error(path: Path | str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path))
    return caught.value


def assert_safe(message: str, tmp_path: Path) -> None:
    assert str(tmp_path) not in message
    assert "Traceback" not in message
    assert "\n" not in message


def test_a_complete_directory_has_no_problems(model_dir: Path) -> None:
    assert validate_model_dir(model_dir) == []


def test_an_empty_directory_reports_every_missing_piece_at_once(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    error = load_error(tmp_path / "bare")
    assert error.problems == (
        "config.json is missing",
        "no weights (model*.safetensors)",
        "no tokenizer (tokenizer.json or tokenizer.model)",
    )
    assert str(error) == (
        "cannot load model 'bare': config.json is missing; no weights (model*.safetensors); "
        "no tokenizer (tokenizer.json or tokenizer.model)"
    )
    assert_safe(str(error), tmp_path)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("{not json", "config.json is not valid JSON (line 1, column 2)"),
        ("[1, 2]", "config.json does not hold a JSON object"),
        ('{"hidden_size": 8}', "config.json has no model_type"),
    ],
)
def test_a_bad_config_is_reported_with_the_other_problems(
    tmp_path: Path, config: str, problem: str
) -> None:
    write_dir(tmp_path / "broken", {"config.json": config, "tokenizer.model": ""})
    assert validate_model_dir(tmp_path / "broken") == [problem, "no weights (model*.safetensors)"]
    error = load_error(tmp_path / "broken")
    assert error.model == "broken"
    assert_safe(str(error), tmp_path)


@pytest.mark.parametrize(
    ("missing", "problem"),
    [
        ("config.json", "config.json is missing"),
        ("model.safetensors", "no weights (model*.safetensors)"),
        ("tokenizer.json", "no tokenizer (tokenizer.json or tokenizer.model)"),
    ],
)
def test_each_missing_file_is_named(
    model_dir: Path, tmp_path: Path, missing: str, problem: str
) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in MODEL_FILES:
        if name != missing:
            (partial / name).symlink_to(model_dir / name)
    assert validate_model_dir(partial) == [problem]
    assert str(load_error(partial)) == f"cannot load model 'partial': {problem}"


def test_missing_paths_and_files_are_not_directories(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert validate_model_dir(tmp_path / "nope") == ["no such directory"]
    assert validate_model_dir(tmp_path / "file") == ["neither a model directory nor a GGUF file"]
    assert str(load_error(tmp_path / "nope")) == "cannot load model 'nope': no such directory"
    assert str(load_error("nope")) == "cannot load model 'nope': no such directory"


UNREADABLE_PROBE = """
import json, sys
from actors.model import ModelLoadError, load_model, validate_model_dir
try:
    load_model(sys.argv[1])
    loaded = "loaded"
except ModelLoadError as error:
    loaded = str(error)
print(json.dumps({"problems": validate_model_dir(sys.argv[1]), "load": loaded}))
"""
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def without_permission_override() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which root's child is refused what file permissions refuse.

    Root reads every directory through two capabilities, not through its uid:
    dropped from the bounding set before ``exec``, the child (still uid 0, so it
    still reads the repository and its own temporary directory) has neither.
    ``None`` when not root: nothing overrides the permissions.
    """
    if os.geteuid() != 0:
        return None
    if not sys.platform.startswith("linux"):
        pytest.skip("root gives up its permission override only on Linux here")
    # Looked up before the fork: the child only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def drop() -> None:
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


def test_an_unreadable_directory_is_reported(tmp_path: Path) -> None:
    locked = write_dir(tmp_path / "locked", {"config.json": "{}"})
    locked.chmod(0)
    try:
        # In a child process, so that root (as CI runs) is refused too: root
        # in this process would read the directory regardless of its mode.
        try:
            probe = subprocess.run(
                [sys.executable, "-c", UNREADABLE_PROBE, str(locked)],
                capture_output=True,
                text=True,
                check=False,
                cwd=REPO_ROOT,
                timeout=25,
                preexec_fn=without_permission_override(),
            )
        except subprocess.SubprocessError as refused:
            if "preexec_fn" not in str(refused):
                raise
            pytest.skip("root without CAP_SETPCAP cannot give up its permission override")
    finally:
        locked.chmod(0o755)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {
        "problems": ["the directory cannot be read"],
        "load": "cannot load model 'locked': the directory cannot be read",
    }


def test_failures_inside_mlx_lm_are_wrapped_without_paths(model_dir: Path, tmp_path: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    files = {name: (model_dir / name).read_text() for name in MODEL_FILES if "json" in name}
    unknown = write_dir(
        tmp_path / "unknown",
        {**files, "config.json": json.dumps({**config, "model_type": "nonesuch"})},
    )
    (unknown / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    error = load_error(unknown)
    assert (
        str(error) == "cannot load model 'unknown': Model type nonesuch not supported. (ValueError)"
    )
    assert isinstance(error.__cause__, ValueError)

    corrupt = write_dir(tmp_path / "corrupt", {**files, "model.safetensors": "not weights"})
    error = load_error(corrupt)
    assert error.model == "corrupt"
    assert_safe(str(error), tmp_path)


def test_a_hub_id_that_cannot_be_fetched_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read on every request: keeps the test off the network wherever it runs.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    error = load_error("nobody-here/no-such-model")
    assert error.model == "nobody-here/no-such-model"
    assert str(error).startswith(
        "cannot load model 'nobody-here/no-such-model': not a local directory, "
        "and the Hugging Face Hub lookup failed: "
    )
    assert "Traceback" not in str(error)
    assert "\n" not in str(error)
