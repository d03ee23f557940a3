"""Models: the embedded generated Llama and loading any model through mlx_lm.

``make_model`` / ``default_model_dir`` write a small random-weight Llama with a
real tokenizer (no network needed); ``load_model`` loads it, or any mlx_lm
model directory or hub id, into a :class:`LoadedModel`.
"""

from actors.model.embedded import (
    FORMAT_VERSION,
    PRESETS,
    ModelPreset,
    cache_dir,
    default_model_dir,
    make_model,
)
from actors.model.load_errors import ModelLoadError
from actors.model.loader import LoadedModel, load_model, validate_model_dir

__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "LoadedModel",
    "ModelLoadError",
    "ModelPreset",
    "cache_dir",
    "default_model_dir",
    "load_model",
    "make_model",
    "validate_model_dir",
]
