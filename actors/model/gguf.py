"""Serving a GGUF file: converted once into an mlx-lm model directory in the cache.

``mx.load`` reads a GGUF file's tensors (Q4_0, Q4_1 and Q8_0 as MLX quantized
arrays, with group size 32) and its metadata. Everything downstream of a model
*directory* (``mlx_lm.load``, its tokenizer detection, the chat template, the
prefix cache's model tag, and ``mlx_lm.server`` in the benchmarks) then works on
the same files, so the conversion writes one, as Ollama imports a GGUF into its
store: ``config.json`` from the ``llama.*`` keys, ``model.safetensors`` with
Hugging Face tensor names, and ``tokenizer.json`` / ``tokenizer_config.json``
built from the ``tokenizer.*`` keys. The directory is written under a hidden
name and renamed into place, so an interrupted conversion leaves nothing that
a later start would mistake for a model.

llama.cpp's converter permutes the rows of the attention Q and K projections
so that its interleaved rotary embedding matches Hugging Face's half-split one;
the conversion applies the inverse permutation, so the result is an ordinary
Hugging Face-layout Llama (``rope_traditional`` stays false).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Final

import mlx.core as mx

from actors.model.gguf_tokenizer import UnsupportedTokenizer, tokenizer_files
from actors.model.load_errors import ModelLoadError, describe_exception

GGUF_MAGIC: Final = b"GGUF"
CONVERTER_VERSION: Final = 1
"""Bump when the files written change, so that cached conversions are redone."""
SUPPORTED_ARCHITECTURES: Final = ("llama",)
GGUF_GROUP_SIZE: Final = 32
"""Every GGUF block type MLX reads (Q4_0, Q4_1, Q8_0) holds 32 weights per scale."""
MLX_TYPES: Final = "F32, F16, BF16, Q4_0, Q4_1 and Q8_0"
_LAYER_NAMES: Final = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES: Final = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_TENSOR: Final = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|scales|biases|bias)")


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a readable file that starts with the GGUF magic."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_display_name(path: Path) -> str:
    """A GGUF model's name: its file name without ``.gguf`` (never a directory)."""
    return path.name.removesuffix(".gguf") or path.name


def gguf_model_dir(path: Path, cache_root: Path) -> Path:
    """The mlx-lm directory converted from the GGUF file ``path``, converting it on first use.

    The cache entry is named by the file's name, size and modification time and
    the converter's version, so an edited or replaced file is converted again.
    Two processes converting at once both succeed: the second rename finds the
    first one's complete directory and keeps it.

    Raises:
        ModelLoadError: An unsupported architecture, tensor type or tokenizer,
            or a file that cannot be read; one sanitized line.
    """
    name = gguf_display_name(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelLoadError(name, [describe_exception(exc)]) from None
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    dest = cache_root / "gguf" / f"{name}-{digest}"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.tmp-{secrets.token_hex(6)}")
    staging.mkdir()
    try:
        convert_gguf(path, staging)
        try:
            staging.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def convert_gguf(path: Path, dest: Path) -> None:
    """Write the mlx-lm model files for the GGUF file ``path`` into the directory ``dest``.

    Raises:
        ModelLoadError: As :func:`gguf_model_dir`.
    """
    name = gguf_display_name(path)
    try:
        loaded: tuple[dict[str, mx.array], dict[str, Any]] = mx.load(  # type: ignore[assignment]
            str(path), return_metadata=True
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(name, [_load_problem(exc)]) from None
    tensors, metadata = loaded
    problems = gguf_problems(metadata, tensors)
    if problems:
        raise ModelLoadError(name, problems)
    config = llama_config(metadata, tensors)
    weights = hf_weights(tensors, config)
    quantization = quantization_config(weights)
    if quantization:
        config["quantization"] = quantization
    try:
        files = tokenizer_files(metadata, config["max_position_embeddings"])
    except UnsupportedTokenizer as exc:
        raise ModelLoadError(name, [str(exc)]) from None
    _write_json(dest / "config.json", config)
    for file_name, content in files.items():
        _write_json(dest / file_name, content)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    for file in dest.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


def gguf_problems(metadata: dict[str, Any], tensors: dict[str, mx.array]) -> list[str]:
    """What stops this GGUF model from being served (empty if nothing)."""
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        return [f"GGUF architecture {architecture!r} is not supported (supported: {supported})"]
    problems: list[str] = []
    for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
        if _int(metadata, f"llama.{key}") is None:
            problems.append(f"the GGUF metadata lacks llama.{key}")
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or "rope_freqs.weight" in tensors:
        problems.append("rotary scaling other than none or linear is not supported")
    unknown = sorted({t for t in tensors if _hf_name(t) is None})
    if unknown:
        problems.append(f"unexpected tensors for a llama model: {', '.join(unknown[:3])}")
    if metadata.get("tokenizer.ggml.model") != "gpt2":
        model = metadata.get("tokenizer.ggml.model")
        problems.append(f"GGUF tokenizer model {model!r} is not supported (supported: 'gpt2' BPE)")
    return problems


def llama_config(metadata: dict[str, Any], tensors: dict[str, mx.array]) -> dict[str, Any]:
    """An mlx-lm (Hugging Face) Llama ``config.json`` from the GGUF metadata."""
    hidden = _required_int(metadata, "llama.embedding_length")
    heads = _required_int(metadata, "llama.attention.head_count")
    head_dim = _int(metadata, "llama.attention.key_length") or hidden // heads
    vocab = _int(metadata, "llama.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _required_int(metadata, "llama.block_count"),
        "intermediate_size": _required_int(metadata, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(metadata, "llama.attention.head_count_kv") or heads,
        "head_dim": head_dim,
        "rms_norm_eps": _float(metadata, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _float(metadata, "llama.rope.freq_base", 10000.0),
        "vocab_size": vocab,
        "max_position_embeddings": _int(metadata, "llama.context_length") or 4096,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
    }
    if metadata.get("llama.rope.scaling.type") == "linear":
        factor = _float(metadata, "llama.rope.scaling.factor", 1.0)
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    return config


def hf_weights(tensors: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    """The tensors under Hugging Face names, with Q and K rows un-permuted."""
    weights: dict[str, mx.array] = {}
    for name, tensor in tensors.items():
        hf_name = _hf_name(name)
        assert hf_name is not None  # gguf_problems refused unknown names
        value = tensor
        if ".self_attn.q_proj." in hf_name:
            value = unpermute_rows(tensor, config["num_attention_heads"])
        elif ".self_attn.k_proj." in hf_name:
            value = unpermute_rows(tensor, config["num_key_value_heads"])
        weights[hf_name] = value
    return weights


def unpermute_rows(value: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's Q/K row permutation (also for packed weights, scales and biases).

    llama.cpp interleaves each head's two rotary halves: row ``2i`` of a head
    is Hugging Face's row ``i``, row ``2i+1`` is row ``i + d/2``. Rows are the
    output dimension, which quantization never packs, so this applies to every
    part of a quantized weight alike.
    """
    rows, rest = value.shape[0], value.shape[1:]
    grouped = value.reshape(heads, rows // heads // 2, 2, *rest)
    return grouped.swapaxes(1, 2).reshape(rows, *rest)


def permute_rows(value: mx.array, heads: int) -> mx.array:
    """llama.cpp's Q/K row permutation (the inverse of :func:`unpermute_rows`)."""
    rows, rest = value.shape[0], value.shape[1:]
    grouped = value.reshape(heads, 2, rows // heads // 2, *rest)
    return grouped.swapaxes(1, 2).reshape(rows, *rest)


def quantization_config(weights: dict[str, mx.array]) -> dict[str, Any]:
    """mlx-lm's ``quantization`` entry: the common width, with per-layer exceptions.

    GGUF files mix block types (an 8-bit embedding beside 4-bit layers is
    common); mlx-lm accepts a layer's own ``{group_size, bits}`` under its path.
    """
    bits_of: dict[str, int] = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            layer = name.removesuffix(".scales")
            packed = weights[f"{layer}.weight"].shape[-1]
            bits_of[layer] = packed * 32 // (scales.shape[-1] * GGUF_GROUP_SIZE)
    if not bits_of:
        return {}
    common = Counter(bits_of.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": common, "mode": "affine"}
    for layer, bits in sorted(bits_of.items()):
        if bits != common:
            config[layer] = {"group_size": GGUF_GROUP_SIZE, "bits": bits, "mode": "affine"}
    return config


def _hf_name(name: str) -> str | None:
    match = _TENSOR.fullmatch(name)
    if match is None:
        return None
    block, base, part = match.groups()
    if block is None:
        top = _TOP_NAMES.get(base)
        return f"{top}.{part}" if top else None
    layer = _LAYER_NAMES.get(base)
    return f"model.layers.{block}.{layer}.{part}" if layer else None


def _load_problem(exc: BaseException) -> str:
    detail = describe_exception(exc)
    if "type" in str(exc).lower():
        return f"a tensor type MLX cannot read (it reads {MLX_TYPES}): {detail}"
    return f"not a readable GGUF file: {detail}"


def _scalar(metadata: dict[str, Any], key: str) -> int | float | None:
    value = metadata.get(key)
    if isinstance(value, mx.array) and value.size == 1:
        item = value.item()
        return item if isinstance(item, (int, float)) else None
    return None


def _int(metadata: dict[str, Any], key: str) -> int | None:
    value = _scalar(metadata, key)
    return None if value is None else int(value)


def _required_int(metadata: dict[str, Any], key: str) -> int:
    value = _int(metadata, key)
    if value is None:
        raise KeyError(key)  # gguf_problems checks these first
    return value


def _float(metadata: dict[str, Any], key: str, default: float) -> float:
    value = _scalar(metadata, key)
    # GGUF stores float32: 1e-5 reads back as 9.99999974e-06 unless rounded.
    return default if value is None else float(f"{float(value):.7g}")


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
