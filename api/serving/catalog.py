"""The served models, by the name requests give in ``model``.

One entry per model: where its requests go (its generation actor), its
tokenizer (the server's own copy, for prompts), and its figures (context
window, vocabulary, embedding size) once its engine has reported them. With
several models, a model's figures are asked for on its first request, which
loads it; one that cannot be loaded answers 503 ``model-unavailable`` with a
``Retry-After``, and the others go on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.generation.client import GenerationClient
from actors.generation.protocol import (
    MODEL_RETRY_AFTER,
    AwaitModel,
    EngineStats,
    ModelUnavailable,
)
from actors.model.load_errors import ModelLoadError
from actors.tree import ModelRoute
from api.http.problems import HTTPProblem
from api.serving.token_names import TokenNames
from runtime import ActorSystem

log = logging.getLogger("troupe.models")

LOAD_TIMEOUT = 900.0
"""Seconds a request waits for its model to load (its own deadline usually ends it first)."""


@dataclass
class CatalogEntry:
    """One served model, as the HTTP layer needs it."""

    name: str
    """The name clients send as ``model``."""
    key: str
    """The name its actors report under ("" with a single model)."""
    generation: str
    kvcache: str
    tokenizer: Callable[[], Any]
    names: TokenNames
    info: EngineStats | None = None
    """Its figures, once its engine has come up."""
    tokenizer_loaded: bool = False


@dataclass
class ModelCatalog:
    """Every served model; the first is the default one health and OpenAPI name."""

    entries: dict[str, CatalogEntry]
    system: Callable[[], ActorSystem]
    """The running actor system (raises the not-ready problem while there is none)."""
    created: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, routes: list[ModelRoute], single_name: str, system: Callable[[], ActorSystem]
    ) -> ModelCatalog:
        """The catalog of an inference tree's routes; ``single_name`` names an unnamed route."""
        entries = {}
        for route in routes:
            name = route.name or single_name
            tokenizer = _guarded(name, route.tokenizer)
            entries[name] = CatalogEntry(
                name,
                route.name,
                route.generation,
                route.kvcache,
                tokenizer,
                TokenNames(tokenizer),
            )
        return cls(entries, system)

    @property
    def default(self) -> CatalogEntry:
        """The first model."""
        return next(iter(self.entries.values()))

    @property
    def several(self) -> bool:
        """Whether more than one model is served (each loads on demand)."""
        return len(self.entries) > 1 or bool(self.default.key)

    def get(self, name: str) -> CatalogEntry:
        """The model ``name``; 404 ``model-not-found`` naming what is served."""
        entry = self.entries.get(name)
        if entry is None:
            served = ", ".join(repr(known) for known in self.entries)
            raise HTTPProblem(404, "model-not-found", f"this server serves {served}")
        return entry

    def client(self, entry: CatalogEntry) -> GenerationClient:
        """A client of ``entry``'s generation actor."""
        system = self.system()
        return GenerationClient(system.ref(entry.generation), system.open_inbox)

    async def described(self, entry: CatalogEntry) -> EngineStats:
        """``entry``'s figures, loading it if needed; 503 ``model-unavailable`` if it fails."""
        if entry.info is not None:
            return entry.info
        answer = await self.system().ref(entry.generation).ask(AwaitModel(), timeout=LOAD_TIMEOUT)
        match answer:
            case EngineStats():
                entry.info = answer
                return answer
            case ModelUnavailable(retry_after=retry_after):
                raise _unavailable(entry.name, retry_after)
        raise HTTPProblem(500, "internal-error", "the server failed to handle this request")


def _unavailable(name: str, retry_after: float) -> HTTPProblem:
    return HTTPProblem(
        503,
        "model-unavailable",
        f"the model {name!r} could not be loaded; the server's log says why",
        (("retry-after", f"{max(1, round(retry_after))}"),),
    )


def _guarded(name: str, tokenizer: Callable[[], Any]) -> Callable[[], Any]:
    """``tokenizer``, whose failure to load is the model's 503, not the server's 500."""

    def load() -> Any:
        try:
            return tokenizer()
        except ModelLoadError as exc:
            log.error(
                "the tokenizer of model %s could not be loaded: %s",
                name,
                exc,
                extra={"event": "model_load_failed", "model": name},
            )
            raise _unavailable(name, MODEL_RETRY_AFTER) from None

    return load
