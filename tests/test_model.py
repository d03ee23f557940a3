"""The embedded model and the loader, on real MLX and mlx_lm (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from actors.model import (
    FORMAT_VERSION,
    PRESETS,
    LoadedModel,
    default_model_dir,
    make_model,
)
from actors.model.embedded import EOS_ID, MODEL_FILES, DestinationExists, cache_dir

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the weather like?"},
]
TEXTS = [
    "The weather today is mild, with a light wind from the west.",
    "  Two leading spaces, a tab\there, and a newline\nat the end.\n",
    "Numbers: 3.14, 42, -7, 1e6; punctuation?! (yes) [ok] {fine} \"quoted\" 'too'",
    "def total(values):\n    return sum(values)  # 🙂 naïve café, 漢字, Ωμέγα",
]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def troupe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )


# --- generation -----------------------------------------------------------------


def test_generation_is_byte_identical_for_the_same_seed(model_dir: Path, tmp_path: Path) -> None:
    again = make_model(tmp_path / "again")
    assert sorted(path.name for path in model_dir.iterdir()) == sorted(MODEL_FILES)
    assert file_bytes(again) == file_bytes(model_dir)


def test_another_seed_changes_only_the_weights(model_dir: Path, tmp_path: Path) -> None:
    other = file_bytes(make_model(tmp_path / "other", seed=1))
    same = file_bytes(model_dir)
    assert other.pop("model.safetensors") != same.pop("model.safetensors")
    assert other == same


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_preset_parameter_counts_match_mlx_lms_llama(size: str) -> None:
    shape = PRESETS[size]
    # Built lazily: the random initializers never run, so this costs nothing.
    flat: dict[str, object] = {}
    tree_flatten(Model(shape.model_args()).parameters(), destination=flat)
    assert sum(getattr(value, "size", 0) for value in flat.values()) == shape.num_parameters
    assert shape.num_key_value_heads < shape.num_attention_heads  # grouped-query attention


def test_sizes_are_roughly_as_advertised() -> None:
    assert 3_000_000 < PRESETS["tiny"].num_parameters < 5_000_000
    assert 25_000_000 < PRESETS["small"].num_parameters < 35_000_000


def test_refuses_to_overwrite_unless_asked(model_dir: Path, tmp_path: Path) -> None:
    dest = make_model(tmp_path / "model", seed=1)
    with pytest.raises(DestinationExists, match="not empty"):
        make_model(dest)
    make_model(dest, overwrite=True)
    assert file_bytes(dest) == file_bytes(model_dir)
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # nothing left aside


def test_an_empty_directory_is_filled_and_a_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (make_model(tmp_path / "empty") / "config.json").is_file()
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(DestinationExists, match="not a directory"):
        make_model(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "keep me"


def test_bad_size_and_seed_are_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model size 'huge' \(choose from tiny, small\)"):
        make_model(tmp_path / "model", "huge")
    with pytest.raises(ValueError, match="seed"):
        make_model(tmp_path / "model", seed=-1)
    assert list(tmp_path.iterdir()) == []


# --- loading and using it -------------------------------------------------------


def test_loaded_model_facts(loaded_model: LoadedModel) -> None:
    assert loaded_model.name == "tiny"
    assert loaded_model.context_length == 2048
    assert loaded_model.num_parameters == PRESETS["tiny"].num_parameters
    tokenizer = loaded_model.tokenizer
    assert tokenizer.convert_tokens_to_ids("</s>") == EOS_ID
    assert loaded_model.eos_token_ids == frozenset(tokenizer.eos_token_ids) == {EOS_ID}
    assert (tokenizer.bos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>",
        "<unk>",
        "<pad>",
    )
    assert len(tokenizer) == PRESETS["tiny"].vocab_size


@pytest.mark.timeout(45)
def test_mlx_lm_loads_it_and_generates(model_dir: Path) -> None:
    loaded = mlx_lm.load(str(model_dir))
    model, tokenizer = loaded[0], loaded[1]
    assert EOS_ID in tokenizer.eos_token_ids
    first = mlx_lm.generate(model, tokenizer, "The weather", max_tokens=4)
    assert first == mlx_lm.generate(model, tokenizer, "The weather", max_tokens=4)
    steps = list(mlx_lm.stream_generate(model, tokenizer, "The weather", max_tokens=4))
    assert 1 <= len(steps) <= 4
    assert all(0 <= step.token < len(tokenizer) for step in steps)
    assert "".join(step.text for step in steps) == first


def test_chat_template_formats_roles_and_the_generation_prompt(loaded_model: LoadedModel) -> None:
    tokenizer = loaded_model.tokenizer
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is the weather like?</s>\n<|assistant|>\n"
    )
    closed = tokenizer.apply_chat_template(CHAT, add_generation_prompt=False, tokenize=False)
    assert text.startswith(closed)
    assert not closed.endswith("<|assistant|>\n")
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-2:] == tokenizer.convert_tokens_to_ids(["<|assistant|>", "Ċ"])  # Ċ is "\n"
    assert ids.count(EOS_ID) == 2
    with pytest.raises(Exception, match="unsupported chat role: critic"):
        tokenizer.apply_chat_template([{"role": "critic", "content": "{}"}], tokenize=False)


def test_chat_template_writes_tool_calls_and_tool_results(loaded_model: LoadedModel) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    turns = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = loaded_model.tokenizer.apply_chat_template(turns, tokenize=False)
    assert text == (
        "<s><|user|>\nWeather?</s>\n<|assistant|>\n<tool_call>"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call></s>\n'
        "<|tool|>\nsunny</s>\n"
    )


@pytest.mark.parametrize("text", TEXTS)
def test_decode_of_encode_round_trips(loaded_model: LoadedModel, text: str) -> None:
    tokenizer = loaded_model.tokenizer
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    detokenizer = tokenizer.detokenizer  # what mlx_lm streams with: a fresh copy each time
    assert isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)
    for token in ids:
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == text.removeprefix(" ")


# --- the cache ------------------------------------------------------------------


def test_default_model_dir_uses_the_cache_and_reuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_dir: Path
) -> None:
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(tmp_path / "cache"))
    first = default_model_dir()
    assert first.parent == tmp_path / "cache" / "models"
    assert first.name.startswith(f"embedded-tiny-v{FORMAT_VERSION}-")
    assert file_bytes(first) == file_bytes(model_dir)
    written = {path.name: path.stat().st_mtime_ns for path in first.iterdir()}
    assert default_model_dir("tiny") == first
    assert {path.name: path.stat().st_mtime_ns for path in first.iterdir()} == written

    (first / "tokenizer.json").unlink()  # damaged by hand: rebuilt, not trusted
    assert default_model_dir() == first
    assert file_bytes(first) == file_bytes(model_dir)
    assert [path.name for path in first.parent.iterdir()] == [first.name]


def test_cache_dir_falls_back_to_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TROUPE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mlx-troupe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mlx-troupe"


@pytest.mark.timeout(60)
def test_processes_racing_to_fill_the_cache_agree(tmp_path: Path, model_dir: Path) -> None:
    env = {**os.environ, "TROUPE_CACHE_DIR": str(tmp_path)}
    code = "from actors.model import default_model_dir; print(default_model_dir())"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
        )
        for _ in range(2)
    ]
    paths = {racer.communicate(timeout=50)[0].strip() for racer in racers}
    assert [racer.returncode for racer in racers] == [0, 0]
    (path,) = paths
    assert file_bytes(Path(path)) == file_bytes(model_dir)
    assert [entry.name for entry in (tmp_path / "models").iterdir()] == [Path(path).name]


# --- troupe make-model ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_make_model_writes_the_same_model_in_another_process(
    model_dir: Path, tmp_path: Path
) -> None:
    result = troupe("make-model", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert f"{PRESETS['tiny'].num_parameters:,} parameters" in result.stdout
    assert str(tmp_path / "cli") in result.stdout
    assert file_bytes(tmp_path / "cli") == file_bytes(model_dir)

    refused = troupe("make-model", str(tmp_path / "cli"))
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("directory is not empty (use --force to replace it)")
    forced = troupe("make-model", "--force", "--seed", "7", str(tmp_path / "cli"))
    assert forced.returncode == 0, forced.stderr
    assert "seed 7" in forced.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--size", "huge"], "argument --size: invalid choice: 'huge'"),
        (["--seed", "-1"], "seed must be in [0, 2**64), not -1"),
        (["{file}/model"], "Not a directory"),
    ],
)
def test_cli_make_model_errors_are_one_readable_line(
    tmp_path: Path, args: list[str], error: str
) -> None:
    (tmp_path / "file").write_text("")
    args = [arg.replace("{file}", str(tmp_path / "file")) for arg in args]
    dest = [] if any("file" in arg for arg in args) else [str(tmp_path / "model")]
    result = troupe("make-model", *args, *dest)
    assert result.returncode == 2
    assert error in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file"]
