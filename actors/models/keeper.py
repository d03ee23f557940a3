"""The model keeper: loads models on demand and unloads idle ones.

Like Ollama's scheduler and LM Studio's TTL, a model that no request has
used for its keep-alive is unloaded, and when loading a model would take the
loaded weights past the memory budget, the least recently used idle model is
unloaded first. A model that is busy is never unloaded: if nothing idle can
make room, the model is loaded anyway and memory-aware admission (intake)
sheds what does not fit.

Before a model's first load its size is an estimate (its files' size); the
size its engine reports replaces it, and room is made again if the estimate
was short (quantized weights widened to float32 on a CPU, for example).

The keeper's book outlives its restarts (the composition root builds it), so a
keeper crash forgets nothing; an engine's own crash is its supervisor's
business, and the restarted engine reloads by itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import anyio

from actors.models.protocol import (
    GetModels,
    LoadModel,
    ModelActivity,
    ModelLoaded,
    ModelLoadFailed,
    ModelPhase,
    ModelsReport,
    ModelState,
    ModelUnloaded,
    ModelWanted,
    UnloadDeclined,
    UnloadModel,
    engine_id,
)
from runtime.actor import Actor
from runtime.errors import TroupeError
from runtime.messages import Message

log = logging.getLogger("troupe.models")

TICK = 0.25
"""Seconds between two looks for models idle past their keep-alive."""


@dataclass(frozen=True)
class KeptModel:
    """A model the keeper manages."""

    name: str
    keep_alive: float | None
    """Seconds it stays loaded while idle; ``None``: for ever."""
    size_estimate: int
    """Bytes its weights are expected to take before it has been loaded."""


@dataclass
class _Slot:
    model: KeptModel
    phase: ModelPhase = ModelPhase.UNLOADED
    weights_bytes: int = 0
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loads: int = 0
    unloads: int = 0

    @property
    def size(self) -> int:
        return self.weights_bytes or self.model.size_estimate

    @property
    def holds_memory(self) -> bool:
        return self.phase in (ModelPhase.LOADING, ModelPhase.LOADED)

    @property
    def unloadable(self) -> bool:
        return self.phase is ModelPhase.LOADED and not self.in_flight


class ModelBook:
    """Every model's slot and the budget (kept across keeper restarts)."""

    def __init__(self, models: list[KeptModel], budget: int | None) -> None:
        self.budget = budget
        self.slots = {model.name: _Slot(model) for model in models}

    def room_for(self, name: str, now: float) -> list[str]:
        """Idle models to unload, least recently used first, so that ``name`` fits."""
        if self.budget is None:
            return []
        others = [s for s in self.slots.values() if s.model.name != name and s.holds_memory]
        need = self.slots[name].size + sum(s.size for s in others)
        victims: list[str] = []
        for slot in sorted((s for s in others if s.unloadable), key=lambda s: s.last_used):
            if need <= self.budget:
                break
            victims.append(slot.model.name)
            need -= slot.size
        return victims

    def loaded(self, name: str, size: int, now: float) -> None:
        """``name``'s engine has loaded it: ``size`` bytes, idle from now.

        The idle clock starts at the load's end, not at the request that asked
        for it: a load longer than the keep-alive would otherwise leave the
        model idle "past its keep-alive" the moment it is up, and unload it
        before the request that asked for it could run.
        """
        slot = self.slots[name]
        slot.phase, slot.weights_bytes = ModelPhase.LOADED, size
        slot.loads += 1
        slot.last_used = now

    def idle_past_keep_alive(self, now: float) -> list[str]:
        """Loaded models nobody has used for longer than their keep-alive."""
        return [
            slot.model.name
            for slot in self.slots.values()
            if slot.unloadable
            and slot.model.keep_alive is not None
            and now - slot.last_used >= slot.model.keep_alive
        ]

    def report(self, now: float) -> ModelsReport:
        """Every model's state."""
        return ModelsReport(
            models=[
                ModelState(
                    name=slot.model.name,
                    phase=slot.phase,
                    weights_bytes=slot.size,
                    in_flight=slot.in_flight,
                    idle_seconds=now - slot.last_used if slot.unloadable else None,
                    keep_alive=slot.model.keep_alive,
                    loads=slot.loads,
                    unloads=slot.unloads,
                )
                for slot in self.slots.values()
            ],
            budget_bytes=self.budget,
        )


class ModelKeeper(Actor):
    """Decides which models are loaded; the engines do the loading."""

    def __init__(self, book: ModelBook) -> None:
        self._book = book

    async def on_start(self) -> None:
        """Watch keep-alives for the life of this incarnation."""
        self.ctx.start_soon(self._expire_idle)

    async def handle(self, message: Message) -> Message | None:
        """Follow the models; load and unload them."""
        now = time.monotonic()
        slots = self._book.slots
        match message:
            case ModelWanted(model=name) if name in slots:
                self._want(name, now)
            case ModelActivity(model=name, in_flight=count) if name in slots:
                slots[name].in_flight = count
                slots[name].last_used = now
            case ModelLoaded(model=name, weights_bytes=size) if name in slots:
                self._loaded(name, size, now)
            case ModelLoadFailed(model=name) if name in slots:
                slots[name].phase = ModelPhase.FAILED
            case ModelUnloaded(model=name) if name in slots:
                slots[name].phase = ModelPhase.UNLOADED
                slots[name].unloads += 1
            case UnloadDeclined(model=name) if name in slots:
                slots[name].phase = ModelPhase.LOADED
                slots[name].last_used = now
            case GetModels():
                return self._book.report(now)
            case _:
                return await super().handle(message)
        return None

    def _want(self, name: str, now: float) -> None:
        slot = self._book.slots[name]
        slot.last_used = now
        if slot.holds_memory:
            return
        self._make_room(name, now)
        slot.phase = ModelPhase.LOADING
        log.info("loading model %s", name, extra={"event": "model_loading", "model": name})
        self._tell_engine(name, LoadModel())

    def _loaded(self, name: str, size: int, now: float) -> None:
        self._book.loaded(name, size, now)
        self._make_room(name, now)  # the estimate may have been short

    def _make_room(self, name: str, now: float) -> None:
        victims = self._book.room_for(name, now)
        for victim in victims:
            self._unload(victim, f"making room for {name}")
        slots = self._book.slots
        if self._book.budget is not None and not victims:
            held = sum(s.size for s in slots.values() if s.holds_memory and s.model.name != name)
            if held + slots[name].size > self._book.budget:
                log.warning(
                    "model %s passes the memory budget, and every other loaded model is busy",
                    name,
                    extra={"event": "model_over_budget", "model": name},
                )

    def _unload(self, name: str, reason: str) -> None:
        self._book.slots[name].phase = ModelPhase.UNLOADING
        log.info(
            "unloading model %s: %s",
            name,
            reason,
            extra={"event": "model_unloading", "model": name},
        )
        self._tell_engine(name, UnloadModel(reason=reason))

    def _tell_engine(self, name: str, message: Message) -> None:
        with contextlib.suppress(TroupeError, LookupError):
            self.ctx.lookup(engine_id(name)).tell_nowait(message)

    async def _expire_idle(self) -> None:
        while True:
            await anyio.sleep(TICK)
            for name in self._book.idle_past_keep_alive(time.monotonic()):
                self._unload(name, "idle past its keep-alive")
