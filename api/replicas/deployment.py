"""The model deployment: each Ray Serve replica is a whole mlx-troupe server.

A :class:`TroupeReplica` builds the same actor tree, engine process and app
as ``troupe serve`` does, and serves the requests the ingress forwards through
its handle. Serve's health check is the actor system's liveness: a replica
whose root supervisor gave up (the one case where ``troupe serve`` would exit
1) fails it, and Serve replaces the replica. Readiness stays the replica's
own business: a replica whose engine is restarting still admits and queues,
as a single server does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from ray import serve

from actors.telemetry import start_tracing, stop_tracing
from api.app import TroupeApp, build_asgi
from api.cli.serve import build_tree, tracing_config
from api.config.settings import Settings
from api.http.logs import configure_logging
from api.http.tracing import RequestTracing
from api.replicas.bridge import AppBridge
from api.replicas.messages import ForwardedRequest, ResponsePart, RouteHint


class TroupeReplica:
    """One replica: the actor system, its engine process and the app, in this Ray actor."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits it
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id
        settings = settings_of_replica(settings, context.rank.rank)
        configure_logging(settings.log_level, settings.log_format)
        tracing = tracing_config(settings)
        self._provider = start_tracing(tracing, "replica") if tracing is not None else None
        requests = RequestTracing.from_provider() if self._provider is not None else None
        self.app = TroupeApp(settings, await build_tree(settings), tracing=requests)
        self.bridge = AppBridge(build_asgi(self.app), replica=self.name)
        await self.bridge.start()

    async def forward(
        self, request: ForwardedRequest, hint: RouteHint | None = None
    ) -> AsyncIterator[ResponsePart]:
        """Serve one forwarded request; ``hint`` is for the router, not read here."""
        async for part in self.bridge.exchange(request):
            yield part

    async def check_health(self) -> None:
        """Serve's health check: raise once the actor system has stopped for good."""
        system = self.app.lifespan.system
        if system is None or not system.running:
            raise RuntimeError("the replica's actor system is not running")

    async def __del__(self) -> None:
        """Serve drained the replica (graceful_shutdown_timeout_s); stop its actors and engine."""
        self.app.close_streams()
        await self.bridge.aclose()
        stop_tracing(self._provider)


def settings_of_replica(settings: Settings, rank: int) -> Settings:
    """``settings`` with the files one replica writes made its own.

    Replicas on one machine would otherwise write one persisted cache directory
    and one audit database at once; the replica's rank (stable across its
    restarts) keeps them apart: ``DIR/replica-0``, ``audit.replica-0.sqlite``.
    """
    changes: dict[str, Any] = {}
    if settings.cache_dir is not None:
        changes["cache_dir"] = str(Path(settings.cache_dir) / f"replica-{rank}")
    if settings.audit_path is not None:
        path = Path(settings.audit_path)
        changes["audit_path"] = str(path.with_name(f"{path.stem}.replica-{rank}{path.suffix}"))
    return msgspec.structs.replace(settings, **changes) if changes else settings
