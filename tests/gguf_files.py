"""A GGUF twin of a generated model, written with the ``gguf`` package as llama.cpp would.

The twin holds the same weights under llama.cpp's tensor names, with the Q and
K rows permuted for its interleaved rotary layout, and the tokenizer as GGUF
metadata; ``qtype`` stores the 2-D weights in a GGUF block type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np

from actors.model.gguf import permute_rows

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def write_gguf_twin(
    model_dir: Path,
    dest: Path,
    *,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    architecture: str = "llama",
    pre: str = "gpt2",
) -> Path:
    """Write ``dest`` from the mlx-lm directory ``model_dir`` (float weights); return it."""
    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(dest), architecture)
    _add_hyperparameters(writer, config)
    _add_tokenizer(writer, model_dir, pre)
    weights = mx.load(str(model_dir / "model.safetensors"))
    assert isinstance(weights, dict)
    for name, weight in sorted(weights.items()):
        gguf_name = _gguf_name(name)
        value = weight
        if "self_attn.q_proj" in name:
            value = permute_rows(weight, config["num_attention_heads"])
        elif "self_attn.k_proj" in name:
            value = permute_rows(weight, config["num_key_value_heads"])
        array = np.array(value.astype(mx.float32))
        if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    writer.add_name("tiny twin")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, pre: str) -> None:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, index in vocab.items():
        tokens[index] = text
    special = {added["content"] for added in tokenizer["added_tokens"] if added["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[settings["bos_token"]])
    writer.add_eos_token_id(vocab[settings["eos_token"]])
    writer.add_unk_token_id(vocab[settings["unk_token"]])
    writer.add_pad_token_id(vocab[settings["pad_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template(settings["chat_template"])


def _gguf_name(name: str) -> str:
    stem, part = name.rsplit(".", 1)
    if stem in _TOP:
        return f"{_TOP[stem]}.{part}"
    _, _, block, layer = stem.split(".", 3)
    return f"blk.{block}.{_LAYER[layer]}.{part}"
