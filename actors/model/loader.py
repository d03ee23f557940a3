"""Loading a model through ``mlx_lm.load``, with failures an operator can read.

A local directory is checked first and every problem is reported in one
:class:`ModelLoadError`; whatever ``mlx_lm`` raises later (a hub lookup offline,
an unsupported architecture, a corrupt file) is wrapped the same way. Messages
name a directory by its last component only and never carry a traceback, so
they are safe for logs, status snapshots and HTTP error bodies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final

import mlx_lm
from mlx.nn.layers.base import Module  # mypy --strict misses mlx.nn's implicit re-export
from mlx_lm.utils import get_total_parameters
from mlx_lm.utils import load_tokenizer as load_tokenizer_files

from actors.model.embedded import cache_dir
from actors.model.gguf import gguf_display_name, gguf_model_dir, is_gguf_file
from actors.model.hub import download
from actors.model.load_errors import ModelLoadError, describe_exception

DEFAULT_CONTEXT_LENGTH: Final = 4096
WEIGHTS_PATTERN: Final = "model*.safetensors"  # the files mlx_lm.load reads
TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer.model")
# transformers reports an unset model_max_length as int(1e30); anything this
# large is a placeholder, not a context length.
_UNSET_LENGTH: Final = 10**9
# owner/name as on the Hugging Face Hub: no leading dot or slash, one slash.
_HUB_ID: Final = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*", re.ASCII)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for generation, with the facts the engine needs about it.

    Attributes:
        model: The MLX module (call it on token ids to get logits).
        tokenizer: mlx_lm's ``TokenizerWrapper`` (HF tokenizer plus detokenizer).
        name: A display name: the directory's last part or the hub id.
        context_length: The most tokens (prompt plus completion) it supports.
        eos_token_ids: Every token id that ends a generation.
        num_parameters: The parameter count (quantized weights counted unpacked).
    """

    model: Module
    tokenizer: Any
    name: str
    context_length: int
    eos_token_ids: frozenset[int]
    num_parameters: int


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the ``owner/name`` shape of a Hugging Face repo id."""
    return _HUB_ID.fullmatch(text) is not None


def display_name(path: Path) -> str:
    """Name a model directory by its last component, never its absolute path."""
    # abspath, not resolve: a symlink's own name is the one the user chose.
    return Path(os.path.abspath(path.expanduser())).name or "/"


def validate_model_dir(path: str | Path) -> list[str]:
    """Return every problem that would stop ``path`` from loading (empty if none).

    A GGUF file passes here; what it holds is checked when it is converted.

    Checks that the directory exists and is readable, that ``config.json`` is a
    JSON object with a ``model_type``, that weights (``model*.safetensors``) are
    there, and that a tokenizer (``tokenizer.json`` or ``tokenizer.model``) is.
    Messages name files, never the directory's absolute path.
    """
    path = Path(path).expanduser()
    try:
        if not path.exists():
            return ["no such directory"]
        if path.is_file() and is_gguf_file(path):
            return []
        if not path.is_dir():
            return ["neither a model directory nor a GGUF file"]
        entries = {entry.name for entry in path.iterdir()}
    except OSError:
        return ["the directory cannot be read"]
    problems: list[str] = []
    if "config.json" in entries:
        problems += _config_problems(path / "config.json")
    else:
        problems.append("config.json is missing")
    if not any(fnmatch(entry, WEIGHTS_PATTERN) for entry in entries):
        problems.append(f"no weights ({WEIGHTS_PATTERN})")
    if not entries.intersection(TOKENIZER_FILES):
        problems.append(f"no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return problems


def load_model(path_or_id: str | Path) -> LoadedModel:
    """Load a model directory, a GGUF file or a hub id through ``mlx_lm.load``.

    A GGUF file is converted once into an mlx-lm directory in the cache
    (:mod:`actors.model.gguf`). An existing path, or anything not shaped like
    ``owner/name``, is otherwise treated as a local directory and validated
    first. A hub id is downloaded first, with retries (:mod:`actors.model.hub`;
    without a network only the hub cache can have it). Loading blocks for as long as reading
    (or converting) the weights takes.

    Raises:
        ModelLoadError: With one message listing every problem found.
    """
    name, source, _ = resolve_source(path_or_id)
    try:
        # mlx_lm types its result as a 2- or 3-tuple; return_config makes it 3.
        loaded: tuple[Any, ...] = mlx_lm.load(source, return_config=True)
        model, tokenizer, config = loaded
        eos_token_ids = frozenset(int(token) for token in tokenizer.eos_token_ids)
        # mlx_lm's count unpacks quantized weights, so it stays the true size.
        num_parameters = int(get_total_parameters(model))  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelLoadError(name, [describe_exception(exc)]) from exc
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        context_length=context_length(config, tokenizer),
        eos_token_ids=eos_token_ids,
        num_parameters=num_parameters,
    )


def load_tokenizer(path_or_id: str | Path) -> Any:
    """Only the tokenizer of a model (mlx_lm's ``TokenizerWrapper``), for the server's prompts.

    Raises:
        ModelLoadError: If it cannot be loaded (one sanitized line).
    """
    name, source, from_hub = resolve_source(path_or_id)
    try:
        return load_tokenizer_files(source if from_hub else Path(source))  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelLoadError(name, [describe_exception(exc)]) from exc


def resolve_source(path_or_id: str | Path) -> tuple[str, str, bool]:
    """``(display name, what mlx_lm loads, whether it is a hub id)`` for a model argument.

    Converts a GGUF file on first use and validates a local directory.

    Raises:
        ModelLoadError: A directory with problems, or a GGUF file that cannot be converted.
    """
    text = str(path_or_id)
    path = Path(text).expanduser()
    if not _exists(path) and looks_like_hub_id(text):
        return text, str(_from_hub(text)), True
    if path.is_file() and is_gguf_file(path):
        return gguf_display_name(path), str(gguf_model_dir(path, cache_dir())), False
    name = display_name(path)
    if problems := validate_model_dir(path):
        raise ModelLoadError(name, problems) from None
    return name, str(path), False


def _from_hub(repo_id: str) -> Path:
    """The complete local snapshot of a hub model (downloaded with retries if needed)."""
    try:
        snapshot = download(repo_id)
    except Exception as exc:
        detail = describe_exception(exc)
        message = f"not a local directory, and the Hugging Face Hub lookup failed: {detail}"
        raise ModelLoadError(repo_id, [message]) from exc
    if problems := validate_model_dir(snapshot):
        raise ModelLoadError(
            repo_id, [f"the downloaded snapshot is incomplete: {p}" for p in problems]
        )
    return snapshot


def context_length(config: Mapping[str, Any], tokenizer: Any) -> int:
    """The model's context: config, else the tokenizer's limit, else a default.

    Multimodal checkpoints keep the language model's settings in
    ``text_config``, so that is consulted after the top level.
    """
    for section in (config, config.get("text_config")):
        if isinstance(section, Mapping):
            length = _length(section.get("max_position_embeddings"))
            if length is not None:
                return length
    limit = _length(getattr(tokenizer, "model_max_length", None))
    if limit is not None and limit < _UNSET_LENGTH:
        return limit
    return DEFAULT_CONTEXT_LENGTH


def _config_problems(config_path: Path) -> list[str]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"config.json is not valid JSON (line {exc.lineno}, column {exc.colno})"]
    except (OSError, UnicodeDecodeError):
        return ["config.json cannot be read"]
    if not isinstance(config, dict):
        return ["config.json does not hold a JSON object"]
    if not isinstance(config.get("model_type"), str):
        return ["config.json has no model_type"]
    return []


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return True  # it is there but unreadable: validation says so


def _length(value: object) -> int | None:
    """``value`` if it is a positive integer (JSON ``true`` is not), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
