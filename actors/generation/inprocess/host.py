"""The owner of loaded weights, which outlives generation-actor restarts.

Loading a model is the slowest thing the server does; a crash in the engine
must not repeat it. The composition root creates one :class:`ModelHost` and
hands it to every incarnation of the generation actor, which asks it for the
model (loading happens once, on a worker thread, never on the event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

M = TypeVar("M")


class ModelHost(Generic[M]):
    """Loads a model on first use and keeps it for every later caller."""

    def __init__(self, load: Callable[[], M]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._model: M | None = None
        self.loads = 0
        """How many times weights were loaded (stays 1 across engine restarts)."""
        self.engine_lock = threading.Lock()
        """Held by the engine thread that is using the weights; a restarted
        engine waits for an abandoned one instead of running beside it."""

    def get(self) -> M:
        """The model, loading it if this is the first call (thread-safe, blocking)."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
                self.loads += 1
            return self._model

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None
