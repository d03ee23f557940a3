"""The ASGI application: routes, health, and the actor system's lifespan.

The app's lifespan starts the actor system and stops it: hypercorn sends
``lifespan.startup`` before serving and ``lifespan.shutdown`` after its last
connection. Health and status endpoints read snapshots directly (never an ask
queued behind inference), so they answer while the engine is busy or
restarting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, TypeVar

import anyio
import msgspec

from actors.generation.protocol import EngineStats, GetEngineStats
from actors.intake.protocol import GetIntakeStats, IntakeStats, StartDraining
from actors.kvcache.protocol import CacheStats, GetCacheStats
from actors.models.protocol import KEEPER, GetModels, ModelsReport
from actors.tree import Inference
from api.admission import Admission
from api.anthropic_api import AnthropicMessages
from api.audit_routes import AuditLog
from api.catalog import ModelCatalog
from api.completions import Completions, CompletionSettings
from api.config import Settings
from api.embeddings import Embeddings
from api.faults import FaultSwitch
from api.health import (
    actors_health,
    engine_counts,
    not_ready_reasons,
    overall_health,
)
from api.http import ASGIApp, Receive, Request, Responder, Scope, Send
from api.logs import AccessLogMiddleware
from api.middleware import AuthMiddleware, CORSMiddleware, ErrorMiddleware, RequestIdMiddleware
from api.model_choice import served_name
from api.observe import Observer, metrics_endpoint, prometheus_endpoint
from api.openai_responses import ModelCard, ModelList
from api.openai_types import MAX_TOKENS_ACCEPTED
from api.openapi import ServedApi, openapi_document
from api.problems import HTTPProblem
from api.responses_api import Responses
from runtime import ActorSystem, ChildStartError, Message, TroupeError, describe_failure

log = logging.getLogger("troupe.server")

Handler = Callable[[Request, Responder], Awaitable[None]]
R = TypeVar("R", bound=Message)
STATS_TIMEOUT = 1.0
"""Seconds status and health wait for an actor's figures before reporting them unknown."""
DRAIN_POLL = 0.05
"""Seconds between two looks at intake's in-flight count while draining."""
STARTUP_ASK_TIMEOUT = 60.0
"""Seconds startup waits for the started generation actor to describe the model."""


def endpoint_timeouts(settings: Settings) -> dict[str, float]:
    """Each generating endpoint's deadline, seconds."""
    return {
        "chat": settings.chat_timeout,
        "completions": settings.completion_timeout,
        "messages": settings.messages_timeout,
        "responses": settings.responses_timeout,
        "embeddings": settings.embeddings_timeout,
    }


class TroupeApp:
    """Routes requests to handlers and owns the actor system for its lifespan."""

    def __init__(self, settings: Settings, inference: Inference, admission: Admission) -> None:
        self.settings = settings
        self.inference = inference
        self.admission = admission
        self.model_name = served_name(settings)
        self.system: ActorSystem | None = None
        self.started = anyio.Event()
        """Set once the actor system is up and the model loaded."""
        self.start_failure: str | None = None
        """Why startup failed (one sanitized line), if it did."""
        self.created = int(time.time())
        self.observer = Observer()
        self.catalog = ModelCatalog.of(inference.routes, self.model_name, self._system)
        self.completions = Completions(
            CompletionSettings(
                model_name="" if self.catalog.several else self.model_name,
                max_body_bytes=settings.max_body_bytes,
                timeouts=endpoint_timeouts(settings),
                max_tokens_limit=settings.max_tokens_limit,
            ),
            self.catalog,
            admission,
            self.observer,
        )
        self.completions.gate = self._require_running
        anthropic = AnthropicMessages(self.completions)
        self.embeddings = Embeddings(self.completions)
        self.faults = FaultSwitch(
            settings.fault_injection,
            engine_process=inference.host is None,
            generation=self.catalog.default.generation,
            kvcache=self.catalog.default.kvcache,
        )
        self._openapi: dict[str, Any] | None = None
        self.routes: dict[str, dict[str, Handler]] = {
            "/health/live": {"GET": self.live},
            "/health/ready": {"GET": self.ready},
            "/health": {"GET": self.health},
            "/v1/models": {"GET": self.models},
            "/openapi.json": {"GET": self.openapi},
            "/v1/supervisor": {"GET": self.supervisor},
            "/metrics": {"GET": self.prometheus},
            "/admin/audit-logs": {"GET": self.audit_logs},
            "/admin/audit-logs/stats": {"GET": self.audit_stats},
            "/admin/faults": {"POST": self.inject_fault, "DELETE": self.clear_faults},
            "/v1/metrics": {"GET": self.metrics},
            "/v1/chat/completions": {"POST": self.completions.chat},
            "/v1/completions": {"POST": self.completions.text},
            "/v1/messages": {"POST": anthropic.create},
            "/v1/messages/count_tokens": {"POST": anthropic.count_tokens},
            "/v1/responses": {"POST": Responses(self.completions).create},
            "/v1/embeddings": {"POST": self.embeddings.create},
        }

    def serves(self, path: str, method: str) -> bool:
        """Whether a route answers ``method`` on ``path`` (else: 404 or 405, key or not)."""
        return method in self.routes.get(path, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (lifespan or HTTP)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        request = Request(scope, receive, body_timeout=self.settings.body_timeout)
        methods = self.routes.get(request.path)
        if methods is None:
            raise HTTPProblem(404, "not-found", f"no route {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            raise HTTPProblem(405, "method-not-allowed", f"use {allow}", (("allow", allow),))
        await handler(request, Responder(send, request))

    # -- lifespan ---------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            async with ActorSystem(self.inference.spec, events=self.inference.events) as system:
                self.system = system
                self.admission.bind(system)
                self.observer.bind(system)
                self._open_audit()
                if not self.catalog.several:
                    await self._describe_single(system)
                self.started.set()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                await self._close_audit()
        except ChildStartError as exc:
            self.start_failure = str(exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        except Exception as exc:
            log.error("the actor system failed: %s", describe_failure(exc))
        await send({"type": "lifespan.shutdown.complete"})

    async def _describe_single(self, system: ActorSystem) -> None:
        """The one model is loaded at start: take its figures and load its tokenizer."""
        # The generation actor started, so the weights are loaded: it knows
        # the context window.
        entry = self.catalog.default
        entry.info = await system.ref(entry.generation).ask(
            GetEngineStats(), timeout=STARTUP_ASK_TIMEOUT, expect=EngineStats
        )
        # Loaded before the first request needs it (a separate copy when the
        # engine runs in its own process; the api never reaches into it).
        await anyio.to_thread.run_sync(entry.tokenizer)

    def _open_audit(self) -> None:
        if self.settings.audit_path:
            self.completions.reporter.audit = AuditLog(
                self.settings.audit_path, self.settings.audit_retention_days
            )

    async def _close_audit(self) -> None:
        audit, self.completions.reporter.audit = self.completions.reporter.audit, None
        if audit is not None:  # writes what is queued: every drained request has its row
            await anyio.to_thread.run_sync(audit.close, limiter=audit.reads)

    async def audit_logs(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs`` (admin key)."""
        await self._audit().logs(request, respond)

    async def audit_stats(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs/stats`` (admin key)."""
        await self._audit().stats(request, respond)

    def _audit(self) -> AuditLog:
        if self.completions.reporter.audit is None:
            raise HTTPProblem(404, "not-found", "this server keeps no audit log (--audit-path)")
        return self.completions.reporter.audit

    async def inject_fault(self, request: Request, respond: Responder) -> None:
        """``POST /admin/faults`` (admin key, ``--fault-injection``)."""
        await self.faults.inject(self._system(), request, respond)

    async def clear_faults(self, request: Request, respond: Responder) -> None:
        """``DELETE /admin/faults`` (admin key, ``--fault-injection``)."""
        await self.faults.clear(self._system(), request, respond)

    def _system(self) -> ActorSystem:
        if self.system is None or not self.system.running:
            raise HTTPProblem(503, "not-ready", "the server is not ready", (("retry-after", "1"),))
        return self.system

    # -- draining ------------------------------------------------------------------

    def _require_running(self) -> None:
        """The completions' gate: refuse every request while the actor system is down."""
        self._system()

    async def drain(self, timeout: float) -> Drained:
        """Have intake refuse new work (503) and wait up to ``timeout`` for what it admitted.

        Intake is the one place that knows whether the server drains and what is
        in flight; this tells it, and polls it while requests finish (an intake
        that is restarting or slow is asked again). With the actors gone (an
        escalation) there is nothing to wait for: requests in flight are
        answered 503 at once, and hypercorn waits for those answers.
        """
        before: int | None = None
        left = 0
        with anyio.move_on_after(timeout):
            while self.system is not None and self.system.running:
                ask = StartDraining() if before is None else GetIntakeStats()
                stats = await self._ask_briefly("intake", ask, IntakeStats)
                if stats is not None:
                    left = stats.in_flight
                    before = left if before is None else before
                    if not left:
                        break
                await anyio.sleep(DRAIN_POLL)
        return Drained(before or 0, left)

    # -- health and status ------------------------------------------------------------

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
        if self.system is None or not self.system.running:
            return ["the actor system is not running"]
        intake = await self._ask_briefly("intake", GetIntakeStats(), IntakeStats)
        draining = intake is not None and intake.draining
        return not_ready_reasons(self.system.status().root, draining)

    async def health(self, request: Request, respond: Responder) -> None:
        """Each actor's health and the server's overall state."""
        if self.system is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        cache = await self._cache_stats()
        breaker = cache.breaker.state if cache is not None else "unknown"
        actors = actors_health(self.system.status().root, breaker)
        overall = overall_health(actors, bool(await self._not_ready()))
        status = 200 if overall != "unhealthy" else 503
        await respond.json(status, {"status": overall, "actors": actors, "cache_breaker": breaker})

    async def prometheus(self, request: Request, respond: Responder) -> None:
        """``GET /metrics``: Prometheus text from the metrics actor."""
        await prometheus_endpoint(self.system, respond)

    async def metrics(self, request: Request, respond: Responder) -> None:
        """``GET /v1/metrics``: JSON (or Prometheus) figures, filtered by category."""
        await metrics_endpoint(self.system, request, respond)

    async def openapi(self, request: Request, respond: Responder) -> None:
        """``GET /openapi.json``: the API, generated from the msgspec types."""
        if self._openapi is None:
            completions = self.completions.settings
            # With several models no one vocabulary or embedding size holds for all.
            info = None if self.catalog.several else self.catalog.default.info
            self._openapi = openapi_document(
                ServedApi(
                    version=_version(),
                    model=self.model_name,
                    max_tokens=completions.max_tokens_limit or MAX_TOKENS_ACCEPTED,
                    vocab_size=info.vocab_size if info else 0,
                    api_keys=bool(self.settings.api_keys),
                    admin_key=bool(self.settings.admin_key),
                    audit_log=bool(self.settings.audit_path),
                    fault_injection=self.faults.enabled,
                    embedding_size=info.embedding_size if info else 0,
                    models=tuple(self.catalog.entries) if self.catalog.several else (),
                )
            )
        await respond.json(200, self._openapi)

    async def models(self, request: Request, respond: Responder) -> None:
        """Every model this server serves, loaded or not (a request loads it)."""
        cards = [ModelCard(id=name, created=self.created) for name in self.catalog.entries]
        await respond.json(200, ModelList(data=cards))

    async def supervisor(self, request: Request, respond: Responder) -> None:
        """The supervision tree, plus the cache breaker, as JSON."""
        if self.system is None:
            raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
        payload: dict[str, Any] = msgspec.to_builtins(self.system.status())
        cache = await self._cache_stats()
        payload["cache"] = (
            None
            if cache is None
            else {"breaker": {"state": cache.breaker.state}, "entries": cache.entries}
        )
        payload["engine"] = await self._engine_counts()
        if self.catalog.several:
            models = await self._ask_briefly(KEEPER, GetModels(), ModelsReport)
            payload["models"] = None if models is None else msgspec.to_builtins(models)
        intake = await self._ask_briefly("intake", GetIntakeStats(), IntakeStats)
        payload["intake"] = (
            None
            if intake is None
            else {
                "in_flight": intake.in_flight,
                "kv_tokens_booked": intake.kv_tokens_booked,
                "memory_left_bytes": intake.memory_left_bytes,
            }
        )
        await respond.json(200, payload)

    async def _cache_stats(self) -> CacheStats | None:
        """The kv-cache actor's figures; ``None`` if it does not answer in time.

        Its mailbox holds only control messages (the engine uses the cache
        directly), so it answers at once unless a save or a drill holds it.
        """
        kvcache = self.catalog.default.kvcache
        return await self._ask_briefly(kvcache, GetCacheStats(), CacheStats)

    async def _engine_counts(self) -> dict[str, Any] | None:
        """The engine's figures; ``None`` if it does not answer at once.

        Running and waiting sequences, weight loads, pending drills and recent
        crash-to-next-token times (seconds).

        The generation actor's mailbox is never blocked by inference (the engine
        runs on its own thread), so this answers in microseconds when it is up.
        """
        generation = self.catalog.default.generation
        stats = await self._ask_briefly(generation, GetEngineStats(), EngineStats)
        return None if stats is None else engine_counts(stats)

    async def _ask_briefly(self, actor: str, message: Message, expect: type[R]) -> R | None:
        """``actor``'s answer within :data:`STATS_TIMEOUT`, or ``None`` (gone, busy, slow)."""
        assert self.system is not None
        with anyio.move_on_after(STATS_TIMEOUT), contextlib.suppress(TroupeError):
            return await self.system.ref(actor).ask(message, timeout=STATS_TIMEOUT, expect=expect)
        return None


@dataclasses.dataclass(frozen=True)
class Drained:
    """How a drain went: admitted requests in flight when it began, and still at its end."""

    before: int
    left: int


def _version() -> str:
    try:
        return metadata.version("mlx-troupe")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0"


def build_asgi(app: TroupeApp) -> ASGIApp:
    """The app wrapped in its middleware, outermost first."""
    settings = app.settings
    inner: ASGIApp = AuthMiddleware(app, settings.api_keys, settings.admin_key, app.serves)
    inner = ErrorMiddleware(inner)
    inner = CORSMiddleware(inner, settings.cors_origins)
    inner = AccessLogMiddleware(inner)  # inside the id: every request line carries it
    return RequestIdMiddleware(inner)
