"""The ASGI application: routes, health, and the actor system's lifespan.

The app's lifespan starts the actor system and stops it: hypercorn sends
``lifespan.startup`` before serving and ``lifespan.shutdown`` after its last
connection. Health and status endpoints read snapshots directly (never an ask
queued behind inference), so they answer while the engine is busy or
restarting.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import anyio

from actors.generation.protocol import EngineStats, GetEngineStats
from actors.intake.protocol import GetIntakeStats, IntakeStats, SetRateLimit, StartDraining
from actors.metrics.protocol import ConfigChanged, record
from actors.tree import Inference
from api.admin.audit_log import AuditLog
from api.admin.console_pages import is_public
from api.admin.fault_switch import FaultSwitch
from api.admin.live_settings import LiveSettings, SettingsHooks, endpoint_timeouts
from api.admin.routes import AdminRoutes
from api.admin.status_routes import StatusRoutes
from api.anthropic.message_types import PROBLEM_SHAPES
from api.anthropic.messages import AnthropicMessages
from api.config.model_choice import served_name
from api.config.settings import Settings
from api.config.toml_file import ConfigFile
from api.http.asgi import ASGIApp, Receive, Request, Responder, Scope, Send
from api.http.logs import AccessLogMiddleware
from api.http.middleware import AuthMiddleware, CORSMiddleware, ErrorMiddleware, RequestIdMiddleware
from api.http.observe import Observer, metrics_endpoint, prometheus_endpoint
from api.http.problems import HTTPProblem
from api.openai.bodies import ModelCard, ModelList
from api.openai.embeddings import Embeddings
from api.openai.request_types import MAX_TOKENS_ACCEPTED
from api.openai.responses.handler import Responses
from api.openapi.document import ServedApi, openapi_document
from api.serving.admission import Admission
from api.serving.catalog import ModelCatalog
from api.serving.limits import CompletionSettings
from api.serving.pipeline import Completions
from runtime import ActorSystem, ChildStartError, describe_failure

log = logging.getLogger("troupe.server")

Handler = Callable[[Request, Responder], Awaitable[None]]
DRAIN_POLL = 0.05
"""Seconds between two looks at intake's in-flight count while draining."""
STARTUP_ASK_TIMEOUT = 60.0
"""Seconds startup waits for the started generation actor to describe the model."""


class TroupeApp:
    """Routes requests to handlers and owns the actor system for its lifespan."""

    def __init__(
        self,
        settings: Settings,
        inference: Inference,
        admission: Admission,
        config_file: ConfigFile | None = None,
    ) -> None:
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
        self.status = StatusRoutes(lambda: self.system, self.catalog, self.model_name)
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
        self.live_settings = LiveSettings(
            settings,
            self.model_name,
            SettingsHooks(
                set_timeouts=self._set_timeouts,
                set_rate_limit=self._set_rate_limit,
                config_changed=self._config_changed,
                audit=self._audit_settings_edit,
            ),
            config_file,
        )
        self.admin = AdminRoutes(
            self.completions.reporter, self.live_settings, self.faults, self._system
        )
        self._openapi: dict[str, Any] | None = None
        self.routes: dict[str, dict[str, Handler]] = {
            "/health/live": {"GET": self.status.live},
            "/health/ready": {"GET": self.status.ready},
            "/health": {"GET": self.status.health},
            "/v1/models": {"GET": self.models},
            "/openapi.json": {"GET": self.openapi},
            "/v1/supervisor": {"GET": self.status.supervisor},
            "/metrics": {"GET": self.prometheus},
            # The console's views, under the admin key (the /v1/ twins take an API key).
            "/admin/supervisor": {"GET": self.status.supervisor},
            "/admin/metrics": {"GET": self.metrics},
            **self.admin.routes(),
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
                self.close_streams()
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

    def _system(self) -> ActorSystem:
        if self.system is None or not self.system.running:
            raise HTTPProblem(503, "not-ready", "the server is not ready", (("retry-after", "1"),))
        return self.system

    # -- run-time settings ---------------------------------------------------------

    def _set_timeouts(self, timeouts: dict[str, float]) -> None:
        # One reference swapped: a request reads its deadline once, when it starts.
        self.completions.settings = dataclasses.replace(
            self.completions.settings, timeouts=timeouts
        )

    async def _set_rate_limit(self, rate: float, burst: int) -> bool:
        change = SetRateLimit(rate_limit_per_second=rate, rate_limit_burst=burst)
        stats = await self.status.ask_briefly("intake", change, IntakeStats)
        return stats is not None and (stats.rate_limit_per_second, stats.rate_limit_burst) == (
            rate,
            burst,
        )

    def _config_changed(self, config: dict[str, str]) -> None:
        if self.system is not None and self.system.running:
            record(self.system.ref("metrics"), ConfigChanged(config=config))

    def _audit_settings_edit(self, request: Request, status: int, took: float) -> None:
        self.admin.record_settings_edit(request, status, took)

    def close_streams(self) -> None:
        """End the consoles' live streams: the server is stopping."""
        self.admin.close_streams()

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
                stats = await self.status.ask_briefly("intake", ask, IntakeStats)
                if stats is not None:
                    left = stats.in_flight
                    before = left if before is None else before
                    if not left:
                        break
                await anyio.sleep(DRAIN_POLL)
        return Drained(before or 0, left)

    # -- metrics, models, the API's description ---------------------------------------

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
    inner: ASGIApp = AuthMiddleware(
        app, settings.api_keys, settings.admin_key, app.serves, public=is_public
    )
    inner = ErrorMiddleware(inner, PROBLEM_SHAPES)
    inner = CORSMiddleware(inner, settings.cors_origins)
    inner = AccessLogMiddleware(inner)  # inside the id: every request line carries it
    return RequestIdMiddleware(inner)
