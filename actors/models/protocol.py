"""Messages of the model keeper, the actor that decides which models are loaded.

Each served model has a subtree of its own (``generation@NAME``,
``kvcache@NAME``, ``engine@NAME``); the keeper (``models``) is told what each
is doing and tells the engines when to load and unload:

======================  ===========================  ====================================
message                 from -> to                   meaning
======================  ===========================  ====================================
``ModelWanted``         generation -> keeper         a request waits for this model
``ModelActivity``       generation -> keeper         requests in flight changed (0 <-> n)
``LoadModel``           keeper -> engine             load the model now
``UnloadModel``         keeper -> engine             stop the engine process (idle, room)
``ModelLoaded``         engine -> keeper             the model is loaded (bytes it takes)
``ModelLoadFailed``     engine -> keeper             loading failed (the engine stays empty)
``ModelUnloaded``       engine -> keeper             the engine process was stopped
``UnloadDeclined``      engine -> keeper             requests arrived in the meantime
``GetModels``           anyone -> keeper (ask)       every model's state (``ModelsReport``)
======================  ===========================  ====================================
"""

from __future__ import annotations

import enum

from runtime.messages import Message

KEEPER = "models"
"""The keeper's actor id."""


def generation_id(model: str) -> str:
    """The id of ``model``'s generation actor in a several-model tree."""
    return f"generation@{model}"


def engine_id(model: str) -> str:
    """The id of ``model``'s engine actor in a several-model tree."""
    return f"engine@{model}"


def kvcache_id(model: str) -> str:
    """The id of ``model``'s kv-cache actor in a several-model tree."""
    return f"kvcache@{model}"


class ModelWanted(Message, frozen=True, kw_only=True):
    """A request waits for ``model``, which is not loaded."""

    model: str


class ModelActivity(Message, frozen=True, kw_only=True):
    """``model`` holds ``in_flight`` requests now (sent when it goes to or from 0)."""

    model: str
    in_flight: int


class LoadModel(Message, frozen=True, kw_only=True):
    """Load the model (a no-op when it is loaded)."""


class UnloadModel(Message, frozen=True, kw_only=True):
    """Stop the engine process, unless requests are in flight on it."""

    reason: str


class ModelLoaded(Message, frozen=True, kw_only=True):
    """``model`` is loaded: its weights take ``weights_bytes``."""

    model: str
    weights_bytes: int


class ModelLoadFailed(Message, frozen=True, kw_only=True):
    """``model`` could not be loaded; ``reason`` is for the server's log."""

    model: str
    reason: str


class ModelUnloaded(Message, frozen=True, kw_only=True):
    """``model``'s engine process was stopped on purpose."""

    model: str


class UnloadDeclined(Message, frozen=True, kw_only=True):
    """``model`` was not unloaded: requests reached it in the meantime."""

    model: str


class ModelPhase(enum.StrEnum):
    """Where a model is in its life."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


class ModelState(Message, frozen=True, kw_only=True):
    """One model as the keeper sees it."""

    name: str
    phase: ModelPhase
    weights_bytes: int
    """Bytes its weights take when loaded (an estimate until it has been)."""
    in_flight: int
    idle_seconds: float | None
    """Seconds a loaded model has been idle (``None``: busy, or not loaded)."""
    keep_alive: float | None
    """Seconds it stays loaded while idle (``None``: for ever)."""
    loads: int
    unloads: int


class GetModels(Message, frozen=True, kw_only=True):
    """Ask the keeper for every model's state."""


class ModelsReport(Message, frozen=True, kw_only=True):
    """Every model's state, and the budget that loading is held to."""

    models: list[ModelState]
    budget_bytes: int | None
    """Bytes the loaded weights may take together (``None``: no limit)."""
