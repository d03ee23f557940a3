"""Health, readiness and the supervision tree: snapshots, never behind inference.

Each reads the runtime's status directly and asks actors only with a short
deadline (:data:`STATS_TIMEOUT`), so probes answer while the engine is busy or
restarting; an actor that does not answer in time is reported unknown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import msgspec

from actors.generation.protocol import EngineStats, GetEngineStats
from actors.intake.protocol import GetIntakeStats, IntakeStats
from actors.kvcache.protocol import CacheStats, GetCacheStats
from actors.models.protocol import KEEPER, GetModels, ModelsReport
from api.admin.health import actors_health, engine_counts, not_ready_reasons, overall_health
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from api.http.tenants import tenant_of
from api.serving.catalog import ModelCatalog
from runtime import ActorSystem, Message, TroupeError

R = TypeVar("R", bound=Message)
STATS_TIMEOUT = 1.0
"""Seconds status and health wait for an actor's figures before reporting them unknown."""


class StatusRoutes:
    """``/health/live``, ``/health/ready``, ``/health`` and the supervision tree."""

    def __init__(
        self, system: Callable[[], ActorSystem | None], catalog: ModelCatalog, model_name: str
    ) -> None:
        self.system = system
        self.catalog = catalog
        self.model_name = model_name

    async def live(self, request: Request, respond: Responder) -> None:
        """The process is up."""
        await respond.json(200, {"status": "alive"})

    async def ready(self, request: Request, respond: Responder) -> None:
        """Model loaded, critical actors running, not draining."""
        reasons = await self._not_ready()
        if reasons:
            raise HTTPProblem(503, "not-ready", "; ".join(reasons), (("retry-after", "1"),))
        await respond.json(200, {"status": "ready", "model": self.model_name})

    async def _not_ready(self) -> list[str]:
        system = self.system()
        if system is None or not system.running:
            return ["the actor system is not running"]
        intake = await self.ask_briefly("intake", GetIntakeStats(), IntakeStats)
        draining = intake is not None and intake.draining
        return not_ready_reasons(system.status().root, draining)

    def _started(self) -> ActorSystem:
        system = self.system()
        if system is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        return system

    async def health(self, request: Request, respond: Responder) -> None:
        """Each actor's health and the server's overall state."""
        system = self._started()
        cache = await self._cache_stats()
        breaker = cache.breaker.state if cache is not None else "unknown"
        actors = actors_health(system.status().root, breaker)
        overall = overall_health(actors, bool(await self._not_ready()))
        status = 200 if overall != "unhealthy" else 503
        await respond.json(status, {"status": overall, "actors": actors, "cache_breaker": breaker})

    async def supervisor(self, request: Request, respond: Responder) -> None:
        """The supervision tree, plus the cache breaker, as JSON."""
        payload: dict[str, Any] = msgspec.to_builtins(self._started().status())
        cache = await self._cache_stats()
        payload["cache"] = (
            None
            if cache is None
            else {"breaker": {"state": cache.breaker.state}, "entries": cache.entries}
        )
        payload["engine"] = await self._engine_counts()
        if self.catalog.several:
            models = await self.ask_briefly(KEEPER, GetModels(), ModelsReport)
            payload["models"] = None if models is None else msgspec.to_builtins(models)
        intake = await self.ask_briefly("intake", GetIntakeStats(), IntakeStats)
        payload["intake"] = (
            None
            if intake is None
            else {
                "in_flight": intake.in_flight,
                "kv_tokens_booked": intake.kv_tokens_booked,
                "memory_left_bytes": intake.memory_left_bytes,
                # The caller's own tenant only: one tenant never sees another's load.
                "tenants": [
                    msgspec.to_builtins(row)
                    for row in intake.tenants
                    if row.tenant == tenant_of(request)
                ],
            }
        )
        await respond.json(200, payload)

    async def _cache_stats(self) -> CacheStats | None:
        """The kv-cache actor's figures; ``None`` if it does not answer in time.

        Its mailbox holds only control messages (the engine uses the cache
        directly), so it answers at once unless a save or a drill holds it.
        """
        kvcache = self.catalog.default.kvcache
        return await self.ask_briefly(kvcache, GetCacheStats(), CacheStats)

    async def _engine_counts(self) -> dict[str, Any] | None:
        """The engine's figures; ``None`` if it does not answer at once.

        Running and waiting sequences, weight loads, pending drills and recent
        crash-to-next-token times (seconds).

        The generation actor's mailbox is never blocked by inference (the engine
        runs on its own thread), so this answers in microseconds when it is up.
        """
        generation = self.catalog.default.generation
        stats = await self.ask_briefly(generation, GetEngineStats(), EngineStats)
        return None if stats is None else engine_counts(stats)

    async def ask_briefly(self, actor: str, message: Message, expect: type[R]) -> R | None:
        """``actor``'s answer within :data:`STATS_TIMEOUT`, or ``None`` (gone, busy, slow)."""
        system = self.system()
        assert system is not None
        with anyio.move_on_after(STATS_TIMEOUT), contextlib.suppress(TroupeError):
            return await system.ref(actor).ask(message, timeout=STATS_TIMEOUT, expect=expect)
        return None
