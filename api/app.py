"""The ASGI application: the server's parts, composed once, and the routes to them.

This is the composition root of the HTTP side. Each part owns its own state
and is given what it needs when it is built (nothing patches another's
attributes afterwards): the actor system's lifespan (:mod:`api.lifespan`),
intake's client, the serving pipeline (:mod:`api.serving`) under each
protocol's handlers, and the operator's routes (:mod:`api.admin`). Health and
status read snapshots directly (never an ask queued behind inference), so
they answer while the engine is busy or restarting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib import metadata

import anyio

from actors.generation.protocol import EngineStats, GetEngineStats
from actors.metrics.protocol import ConfigChanged, record
from actors.tree import Inference
from api.admin.audit_log import AuditLog
from api.admin.console_pages import is_public
from api.admin.fault_switch import FaultSwitch
from api.admin.live_settings import LiveSettings, SettingsHooks, endpoint_timeouts
from api.admin.routes import AdminRoutes
from api.admin.status_routes import StatusRoutes
from api.admin.tenants_route import TenantsRoute
from api.anthropic.message_types import PROBLEM_SHAPES
from api.anthropic.messages import AnthropicMessages
from api.config.model_choice import served_name
from api.config.settings import Settings
from api.config.tenants_file import read_tenants_file
from api.config.toml_file import ConfigFile
from api.http.asgi import ASGIApp, Receive, Request, Responder, Scope, Send
from api.http.logs import AccessLogMiddleware
from api.http.middleware import AuthMiddleware, CORSMiddleware, ErrorMiddleware, RequestIdMiddleware
from api.http.observe import MetricsRoutes, Observer
from api.http.problems import HTTPProblem
from api.http.tenants import TenantDirectory
from api.http.tracing import RequestTracing
from api.lifespan import LifespanHooks, SystemLifespan
from api.openai.completions import Completions
from api.openai.embeddings import Embeddings
from api.openai.models import ModelsRoute
from api.openai.request_types import MAX_TOKENS_ACCEPTED
from api.openai.responses.handler import Responses
from api.openapi.document import OpenApiRoute
from api.openapi.parts import ServedApi
from api.serving.catalog import ModelCatalog
from api.serving.intake_client import IntakeClient
from api.serving.limits import ServingLimits
from api.serving.outcome import Reporter
from api.serving.pipeline import Pipeline
from runtime import ActorSystem

log = logging.getLogger("troupe.server")

Handler = Callable[[Request, Responder], Awaitable[None]]
STARTUP_ASK_TIMEOUT = 60.0
"""Seconds startup waits for the started generation actor to describe the model."""


class TroupeApp:
    """Composes the server's parts and routes each request to its handler."""

    def __init__(
        self,
        settings: Settings,
        inference: Inference,
        config_file: ConfigFile | None = None,
        tracing: RequestTracing | None = None,
    ) -> None:
        """``tracing``: the request spans' tracer (``None``: tracing is off)."""
        self.settings = settings
        self.inference = inference
        self.model_name = served_name(settings)
        teams = read_tenants_file(settings.tenants) if settings.tenants is not None else None
        self.tenants = TenantDirectory(settings.api_keys, teams)
        """The accepted API keys and their tenants (checked at start-up by check-config)."""
        self.lifespan = SystemLifespan(inference, LifespanHooks(self._started, self._stopping))
        self.intake = IntakeClient()
        self.observer = Observer()
        self.catalog = ModelCatalog.of(inference.routes, self.model_name, self.lifespan.running)
        self.status = StatusRoutes(lambda: self.lifespan.system, self.catalog, self.model_name)
        reported_as = "" if self.catalog.several else self.model_name
        self.reporter = Reporter(reported_as, self.observer, tracing)
        self.pipeline = Pipeline(
            ServingLimits(
                model_name=reported_as,
                max_body_bytes=settings.max_body_bytes,
                timeouts=endpoint_timeouts(settings),
                max_tokens_limit=settings.max_tokens_limit,
            ),
            self.catalog,
            self.intake,
            self.observer,
            reporter=self.reporter,
            gate=self.lifespan.require_running,
        )
        self.audit: AuditLog | None = None
        """The audit log, open while the server runs with ``--audit-path``."""
        self.faults = FaultSwitch(
            settings.fault_injection,
            engine_process=inference.host is None,
            generation=self.catalog.default.generation,
            kvcache=self.catalog.default.kvcache,
        )
        hooks = SettingsHooks(
            set_timeouts=self.pipeline.set_timeouts,
            set_rate_limit=self.intake.set_rate_limit,
            config_changed=self._config_changed,
            audit=self._audit_settings_edit,
        )
        self.live_settings = LiveSettings(settings, self.model_name, hooks, config_file)
        self.admin = AdminRoutes(
            lambda: self.audit, self.live_settings, self.faults, self.lifespan.running
        )
        self.routes = self._routes()

    def _routes(self) -> dict[str, dict[str, Handler]]:
        completions = Completions(self.pipeline)
        anthropic = AnthropicMessages(self.pipeline)
        metrics = MetricsRoutes(lambda: self.lifespan.system)
        models = ModelsRoute(self.catalog.entries, int(time.time()))
        tenants = TenantsRoute(self.tenants, self.intake, self.settings.tenants)
        return {
            "/health/live": {"GET": self.status.live},
            "/health/ready": {"GET": self.status.ready},
            "/health": {"GET": self.status.health},
            "/v1/models": {"GET": models.list},
            "/openapi.json": {"GET": OpenApiRoute(self._served_api).get},
            "/v1/supervisor": {"GET": self.status.supervisor},
            "/metrics": {"GET": metrics.prometheus},
            # The console's views, under the admin key (the /v1/ twins take an API key).
            "/admin/supervisor": {"GET": self.status.supervisor},
            "/admin/metrics": {"GET": metrics.metrics},
            "/admin/tenants": {"GET": tenants.show, "PUT": tenants.replace},
            **self.admin.routes(),
            "/v1/metrics": {"GET": metrics.metrics},
            "/v1/chat/completions": {"POST": completions.chat},
            "/v1/completions": {"POST": completions.text},
            "/v1/messages": {"POST": anthropic.create},
            "/v1/messages/count_tokens": {"POST": anthropic.count_tokens},
            "/v1/responses": {"POST": Responses(self.pipeline).create},
            "/v1/embeddings": {"POST": Embeddings(self.pipeline).create},
        }

    def serves(self, path: str, method: str) -> bool:
        """Whether a route answers ``method`` on ``path`` (else: 404 or 405, key or not)."""
        return method in self.routes.get(path, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (lifespan or HTTP)."""
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
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

    # -- the system's start and stop ------------------------------------------------

    async def _started(self, system: ActorSystem) -> None:
        self.intake.bind(system)
        self.observer.bind(system)
        if self.settings.audit_path:
            self.audit = AuditLog(self.settings.audit_path, self.settings.audit_retention_days)
            self.reporter.attach_audit(self.audit)
        if not self.catalog.several:
            await self._describe_single(system)

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

    async def _stopping(self) -> None:
        self.close_streams()
        audit, self.audit = self.audit, None
        self.reporter.attach_audit(None)
        if audit is not None:  # writes what is queued: every drained request has its row
            await anyio.to_thread.run_sync(audit.close, limiter=audit.reads)

    def close_streams(self) -> None:
        """End the consoles' live streams: the server is stopping."""
        self.admin.close_streams()

    # -- run-time settings ---------------------------------------------------------

    def _config_changed(self, config: dict[str, str]) -> None:
        system = self.lifespan.system
        if system is not None and system.running:
            record(system.ref("metrics"), ConfigChanged(config=config))

    def _audit_settings_edit(self, request: Request, status: int, took: float) -> None:
        self.admin.record_settings_edit(request, status, took)

    # -- the API's description ---------------------------------------------------------

    def _served_api(self) -> ServedApi:
        limits = self.pipeline.limits
        # With several models no one vocabulary or embedding size holds for all.
        info = None if self.catalog.several else self.catalog.default.info
        return ServedApi(
            version=_version(),
            model=self.model_name,
            max_tokens=limits.max_tokens_limit or MAX_TOKENS_ACCEPTED,
            vocab_size=info.vocab_size if info else 0,
            api_keys=bool(self.tenants),
            admin_key=bool(self.settings.admin_key),
            audit_log=bool(self.settings.audit_path),
            fault_injection=self.faults.enabled,
            embedding_size=info.embedding_size if info else 0,
            models=tuple(self.catalog.entries) if self.catalog.several else (),
        )


def _version() -> str:
    try:
        return metadata.version("mlx-troupe")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0"


def build_asgi(app: TroupeApp) -> ASGIApp:
    """The app wrapped in its middleware, outermost first."""
    settings = app.settings
    inner: ASGIApp = AuthMiddleware(
        app, app.tenants, settings.admin_key, app.serves, public=is_public
    )
    inner = ErrorMiddleware(inner, PROBLEM_SHAPES)
    inner = CORSMiddleware(inner, settings.cors_origins)
    inner = AccessLogMiddleware(inner)  # inside the id: every request line carries it
    return RequestIdMiddleware(inner)
