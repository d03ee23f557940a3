"""The models file: several models in one server (``troupe serve --models models.toml``).

::

    keep_alive = 300           # seconds an idle model stays loaded; -1: for ever
    memory_budget = 8_000_000_000  # bytes the loaded weights may take; unset: --memory-budget

    [[model]]
    name = "smollm2"           # what requests name in "model"
    path = "SmolLM2-135M-Instruct.Q4_1.gguf"   # a directory, a GGUF file or a hub id
    preload = true             # load at startup (default: on its first request)
    keep_alive = -1            # this model's own keep-alive

    [[model]]
    name = "tiny"
    path = "embedded"          # the generated random-weight model
    weights = "quantized"      # this model's weight layout (auto, quantized, float32)

A relative path is read against the file's directory when something is there,
else taken as a hub id. Every mistake is reported with where it is, before
anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from actors.models.served import ServedModel

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""A served name: what requests send as ``model``, in actor ids and metric labels."""
FOREVER = -1.0
DEFAULT_KEEP_ALIVE = 300.0
"""Seconds an idle model stays loaded, as Ollama's default of five minutes."""
MAX_MODELS = 32


class ModelsFileError(ValueError):
    """The models file cannot be used; the message says where and why."""


class _Model(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    path: str
    preload: bool = False
    keep_alive: Annotated[float, msgspec.Meta(ge=-1)] | None = None
    weights: Literal["auto", "quantized", "float32"] | None = None


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: list[_Model]
    keep_alive: Annotated[float, msgspec.Meta(ge=-1)] = DEFAULT_KEEP_ALIVE
    memory_budget: Annotated[int, msgspec.Meta(ge=1)] | None = None


@dataclass(frozen=True)
class ModelsFile:
    """What a models file says."""

    models: list[ServedModel]
    memory_budget: int | None
    """Bytes the loaded models' weights may take together; ``None``: the server's budget."""


def read_models_file(path: str | Path, embedded: str | None = None) -> ModelsFile:
    """Read and check a models file; ``embedded``: the directory ``path = "embedded"`` means.

    Raises:
        ModelsFileError: Unreadable, not TOML, a wrong field, or a duplicate name.
    """
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ModelsFileError(f"the models file cannot be read ({exc.strerror})") from None
    try:
        parsed = msgspec.toml.decode(raw, type=_File)
    except msgspec.ValidationError as exc:
        raise ModelsFileError(f"the models file: {_where(exc)}") from None
    except msgspec.DecodeError as exc:
        raise ModelsFileError(f"the models file is not valid TOML: {exc}") from None
    return ModelsFile(
        [_served(entry, parsed.keep_alive, file.parent, embedded) for entry in _checked(parsed)],
        parsed.memory_budget,
    )


def _checked(parsed: _File) -> list[_Model]:
    if not parsed.model:
        raise ModelsFileError("the models file names no model: add a [[model]] table")
    if len(parsed.model) > MAX_MODELS:
        raise ModelsFileError(f"the models file names more than {MAX_MODELS} models")
    seen: set[str] = set()
    for index, entry in enumerate(parsed.model):
        where = f"model[{index}]"
        if not NAME.fullmatch(entry.name):
            raise ModelsFileError(
                f"the models file: {where}.name {entry.name[:70]!r} must be 1-64 letters, digits"
                " or . _ : - (starting with a letter or digit)"
            )
        if entry.name in seen:
            raise ModelsFileError(f"the models file: {where}.name {entry.name!r} is used twice")
        seen.add(entry.name)
        if not entry.path.strip():
            raise ModelsFileError(f"the models file: {where}.path is empty")
    return parsed.model


def _served(entry: _Model, keep_alive: float, base: Path, embedded: str | None) -> ServedModel:
    alive = entry.keep_alive if entry.keep_alive is not None else keep_alive
    return ServedModel(
        name=entry.name,
        source=_source(entry.path, base, embedded),
        keep_alive=None if alive == FOREVER else alive,
        preload=entry.preload,
        weights=entry.weights,
    )


def _source(path: str, base: Path, embedded: str | None) -> str:
    if path == "embedded" and embedded is not None:
        return embedded
    given = Path(path).expanduser()
    if given.is_absolute():
        return str(given)
    beside = base / given
    return str(beside) if beside.exists() else path


def _where(exc: msgspec.ValidationError) -> str:
    """Msgspec's message with its JSON path turned into TOML's words."""
    message = str(exc)
    return message.replace("`$.", "`").replace("`$`", "the file")
