"""A Hugging Face tokenizer built from a GGUF file's ``tokenizer.*`` metadata.

GGUF stores a byte-level BPE tokenizer as its vocabulary, its merges, a type
per token and the name of llama.cpp's pre-tokenizer (``tokenizer.ggml.pre``),
which stands for the split rules that the original ``tokenizer.json`` spelled
out. The ``tokenizers`` library rebuilds the same tokenizer from those parts;
a pre-tokenizer this module does not know is refused by name rather than
guessed, since a wrong split changes every prompt's tokens without an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import mlx.core as mx
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# llama.cpp's llama_token_type values.
CONTROL: Final = 3
USER_DEFINED: Final = 4
_LLAMA3_SPLIT: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    # SmolLM's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
    digits = pre_tokenizers.Digits(individual_digits=True)
    return pre_tokenizers.Sequence([digits, _gpt2()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([split, byte_level])


PRE_TOKENIZERS: Final[dict[str, Callable[[], pre_tokenizers.PreTokenizer]]] = {
    "default": _gpt2,
    "gpt2": _gpt2,
    "smollm": _smollm,
    "llama-bpe": _llama3,
}


class UnsupportedTokenizer(ValueError):
    """The GGUF tokenizer uses a pre-tokenizer (or layout) this module cannot rebuild."""


def tokenizer_files(metadata: dict[str, Any], context_length: int) -> dict[str, dict[str, Any]]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json`` contents.

    Raises:
        UnsupportedTokenizer: An unknown ``tokenizer.ggml.pre``.
    """
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types = _ints(metadata.get("tokenizer.ggml.token_type")) or [1] * len(tokens)
    tokenizer = build_tokenizer(metadata, tokens, types)

    def token(key: str) -> str | None:
        index = _int(metadata.get(f"tokenizer.ggml.{key}"))
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(_int(metadata.get("tokenizer.ggml.add_bos_token")) or 0)
    config: dict[str, Any] = {
        # transformers 5 maps this to its TokenizersBackend, which uses tokenizer.json as is.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos,
        "add_eos_token": False,
    }
    if isinstance(template := metadata.get("tokenizer.chat_template"), str):
        config["chat_template"] = template
    stops = [
        index
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (index := _int(metadata.get(f"tokenizer.ggml.{key}"))) is not None
    ]
    unique = sorted(set(stops))
    generation: dict[str, Any] = {
        "bos_token_id": _int(metadata.get("tokenizer.ggml.bos_token_id")),
        "eos_token_id": unique[0] if len(unique) == 1 else unique or None,
    }
    return {
        "tokenizer.json": json.loads(tokenizer.to_str()),
        "tokenizer_config.json": {k: v for k, v in config.items() if v is not None},
        "generation_config.json": {k: v for k, v in generation.items() if v is not None},
    }


def build_tokenizer(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes.

    Raises:
        UnsupportedTokenizer: An unknown ``tokenizer.ggml.pre``.
    """
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise UnsupportedTokenizer(f"GGUF pre-tokenizer {pre!r} is not supported ({known} are)")
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {text: index for index, text in enumerate(tokens)}
    # llama-3 matches whole words against the vocabulary before merging, as its tokenizer.json.
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    byte_level = processors.ByteLevel(trim_offsets=False)
    tokenizer.post_processor = byte_level
    bos = _int(metadata.get("tokenizer.ggml.bos_token_id"))
    if _int(metadata.get("tokenizer.ggml.add_bos_token")) and bos is not None:
        # As Llama 3's tokenizer.json: the bos token is part of every encoding.
        text = tokens[bos]
        template = processors.TemplateProcessing(
            single=f"{text} $A", pair=f"{text} $A {text} $B", special_tokens=[(text, bos)]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, template])
    added = [
        AddedToken(text, special=kind == CONTROL, normalized=False)
        for text, kind in zip(tokens, types, strict=True)
        if kind in (CONTROL, USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def _int(value: object) -> int | None:
    if isinstance(value, mx.array) and value.size == 1:
        item = value.item()
        return int(item) if isinstance(item, (int, float, bool)) else None
    return None


def _ints(value: object) -> list[int] | None:
    if isinstance(value, mx.array):
        items = value.reshape(-1).tolist()
        assert isinstance(items, list)
        return [int(item) for item in items if isinstance(item, (int, float))]
    return None
