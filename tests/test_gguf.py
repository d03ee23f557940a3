"""GGUF files: converted into mlx-lm directories that generate what their safetensors twins do."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import pytest
from mlx_lm.generate import stream_generate

from actors.model import LoadedModel, ModelLoadError, load_model
from actors.model.gguf import gguf_model_dir, permute_rows, unpermute_rows
from tests.gguf_files import write_gguf_twin

pytestmark = pytest.mark.timeout(120)
PROMPTS = ("Once upon a time", "The quick brown fox 12345", "<|user|>\nhello")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache directory for the converted models."""
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def greedy(model: LoadedModel, prompt: str, tokens: int = 24) -> list[int]:
    ids = model.tokenizer.encode(prompt)
    return [step.token for step in stream_generate(model.model, model.tokenizer, ids, tokens)]


def test_a_float_twin_generates_the_same_greedy_tokens(
    model_dir: Path, loaded_model: LoadedModel, tmp_path: Path, cache: Path
) -> None:
    twin = load_model(write_gguf_twin(model_dir, tmp_path / "tiny-twin.F32.gguf"))
    assert twin.name == "tiny-twin.F32"
    assert twin.context_length == loaded_model.context_length
    assert twin.eos_token_ids == loaded_model.eos_token_ids
    assert twin.num_parameters == loaded_model.num_parameters
    for prompt in PROMPTS:
        assert twin.tokenizer.encode(prompt) == loaded_model.tokenizer.encode(prompt)
        assert greedy(twin, prompt) == greedy(loaded_model, prompt)
    messages = [{"role": "user", "content": "Hi"}]
    assert twin.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    ) == loaded_model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def test_q8_0_weights_load_as_mlx_quantized_layers_close_to_the_floats(
    model_dir: Path, loaded_model: LoadedModel, tmp_path: Path, cache: Path
) -> None:
    path = write_gguf_twin(
        model_dir, tmp_path / "tiny.Q8_0.gguf", qtype=gguf.GGMLQuantizationType.Q8_0
    )
    twin = load_model(path)
    config = json.loads((gguf_model_dir(path, cache) / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    ids = mx.array([loaded_model.tokenizer.encode(PROMPTS[0])])
    exact, quantized = loaded_model.model(ids), twin.model(ids)
    # 8-bit blocks of 32: logits stay within a few percent of the float model's.
    assert (mx.abs(quantized - exact).max() < 0.05 * mx.abs(exact).max()).item()


def test_conversion_is_cached_and_leaves_no_staging_behind(
    model_dir: Path, tmp_path: Path, cache: Path
) -> None:
    path = write_gguf_twin(model_dir, tmp_path / "tiny.gguf")
    first = gguf_model_dir(path, cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert gguf_model_dir(path, cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [entry.name for entry in (cache / "gguf").iterdir()] == [first.name]


def test_unsupported_architecture_is_refused_by_name(
    model_dir: Path, tmp_path: Path, cache: Path
) -> None:
    path = write_gguf_twin(model_dir, tmp_path / "odd.gguf", architecture="mamba")
    with pytest.raises(ModelLoadError, match="architecture 'mamba' is not supported") as caught:
        load_model(path)
    assert str(tmp_path) not in str(caught.value)
    assert not any((cache / "gguf").iterdir())


def test_unknown_pre_tokenizer_is_refused_rather_than_guessed(
    model_dir: Path, tmp_path: Path, cache: Path
) -> None:
    path = write_gguf_twin(model_dir, tmp_path / "odd.gguf", pre="mystery")
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'mystery' is not supported"):
        load_model(path)


def test_a_file_that_is_not_gguf_is_neither_a_directory_nor_a_model(
    tmp_path: Path, cache: Path
) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="neither a model directory nor a GGUF file"):
        load_model(path)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    rows = mx.arange(4 * 8 * 3).reshape(32, 3)  # 4 heads of 8 rows
    assert mx.array_equal(unpermute_rows(permute_rows(rows, 4), 4), rows)
    # Within a head, llama.cpp interleaves the two rotary halves: 0, 4, 1, 5, ...
    assert permute_rows(rows, 4)[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
