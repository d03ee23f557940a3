"""How the engine actor watches its process, and whom it works with."""

from __future__ import annotations

from dataclasses import dataclass

GENERATION = "generation"
"""The id of the actor that keeps the requests."""
ENGINE_ACTOR = "engine"
"""This actor's id."""


@dataclass(frozen=True)
class EngineProcessSettings:
    """How the engine process is watched (defaults after vLLM's 60 s step timeout, halved)."""

    hang_timeout: float = 30.0
    """Seconds without a heartbeat, or without a step while requests wait, that mean hung."""
    heartbeat_interval: float = 0.5
    """Seconds between two heartbeats of the engine process."""
    load_timeout: float = 600.0
    """Seconds the engine process may take to load the model."""
    stop_timeout: float = 30.0
    """Seconds a shutdown waits for the process to finish its step and save the cache."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.hang_timeout <= self.heartbeat_interval:
            raise ValueError("the hang timeout must exceed the (positive) heartbeat interval")


@dataclass(frozen=True)
class EnginePeers:
    """Whom the engine actor works with (ids differ per model in a several-model tree)."""

    generation: str = GENERATION
    keeper: str | None = None
    """The model keeper: the engine then loads on demand; ``None``: at start, or never up."""
    model: str = ""
    preload: bool = False
    """With a keeper: load at start all the same (a failure is reported, not raised)."""
