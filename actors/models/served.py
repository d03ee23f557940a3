"""One served model of several, as the composition root is told it (imports no MLX)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServedModel:
    """One model of several: its name, what to load, and how long it stays loaded."""

    name: str
    source: str
    """A model directory, a GGUF file or a hub id."""
    keep_alive: float | None = 300.0
    """Seconds it stays loaded while idle; ``None``: for ever."""
    preload: bool = False
    """Load it at startup instead of on its first request."""
    weights: str | None = None
    """Its weight layout (``auto``, ``quantized``, ``float32``); ``None``: the server's."""
