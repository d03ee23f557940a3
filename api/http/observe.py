"""How the HTTP layer reports to the metrics actor, and its two metrics endpoints.

Recording never waits: events go with ``tell_nowait`` and a full metrics
mailbox costs a counted drop, never a slower request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import msgspec

from actors.metrics.protocol import (
    CATEGORIES,
    GetMetricsSnapshot,
    MetricsSnapshot,
    PrometheusText,
    RenderPrometheus,
    RequestCancelled,
    RequestCompleted,
    RequestShed,
    cap_samples,
    record,
)
from api.config.settings import SECRET_SETTINGS, Settings
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from runtime import ActorRef, ActorSystem, Message

PATH_SETTINGS = frozenset({"model", "cache_dir", "audit_path"})
"""Settings holding file paths, which responses never show (only whether they are set)."""

METRICS_TIMEOUT = 5.0
"""Seconds a metrics query may take; the metrics actor never waits on inference."""
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Timing:
    """When one request started, got its first token and each later one."""

    start: float = field(default_factory=time.monotonic)
    first: float | None = None
    arrivals: list[float] = field(default_factory=list)

    def token(self) -> None:
        """Note a chunk of text arriving now."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.arrivals.append(now)

    def gaps(self) -> list[float]:
        """Seconds between consecutive chunks (bounded sample)."""
        pairs = zip(self.arrivals, self.arrivals[1:], strict=False)
        return cap_samples([later - earlier for earlier, later in pairs])


class Observer:
    """Sends request events to the metrics actor of a running system."""

    def __init__(self) -> None:
        self.ref: ActorRef | None = None

    def bind(self, system: ActorSystem | None) -> None:
        """Use the metrics actor of ``system`` (``None``: record nothing)."""
        self.ref = None if system is None else system.ref("metrics")

    def _send(self, event: Message) -> None:
        if self.ref is not None:
            record(self.ref, event)

    def completed(self, event: RequestCompleted) -> None:
        """A request ended (successfully or not)."""
        self._send(event)

    def shed(self, reason: str, tenant: str = "") -> None:
        """Intake refused a request (of ``tenant``, on a server with keys)."""
        self._send(RequestShed(reason=reason, tenant=tenant))

    def cancelled(self, reason: str) -> None:
        """A request was cut short (disconnect, deadline)."""
        self._send(RequestCancelled(reason=reason))


def public_config(settings: Settings, model_name: str) -> dict[str, str]:
    """The effective settings for ``troupe_config_info``: no secrets, no file paths.

    Args:
        settings: The server's settings.
        model_name: The served model's name (in place of its path).

    Returns:
        Setting name to value as text; ``model`` is the served name, and
        ``audit_log`` and ``cache_persistence`` say ``on`` or ``off``.
    """
    hidden = SECRET_SETTINGS | PATH_SETTINGS
    config = {
        name: _as_label(getattr(settings, name))
        for name in settings.__struct_fields__
        if name not in hidden
    }
    config["model"] = model_name
    config["audit_log"] = "on" if settings.audit_path else "off"
    config["cache_persistence"] = "on" if settings.cache_dir else "off"
    return config


def _as_label(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


async def metrics_text(system: ActorSystem | None) -> str:
    """The Prometheus exposition from the metrics actor."""
    if system is None:
        raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
    answer = await system.ref("metrics").ask(
        RenderPrometheus(), timeout=METRICS_TIMEOUT, expect=PrometheusText
    )
    return answer.text


async def prometheus_endpoint(system: ActorSystem | None, respond: Responder) -> None:
    """``GET /metrics``."""
    text = await metrics_text(system)
    await respond.start(200, PROMETHEUS_TYPE, [])
    await respond.chunk(text.encode(), more=False)


async def metrics_endpoint(
    system: ActorSystem | None, request: Request, respond: Responder
) -> None:
    """``GET /v1/metrics?format=json|prometheus&category=cache,latency,...``."""
    raw = bytes(request.scope.get("query_string", b"")).decode("latin-1")
    query = parse_qs(raw, keep_blank_values=True)  # `format=` is a mistake, not a default
    form = query.get("format", ["json"])[-1]
    if form not in ("json", "prometheus"):
        raise HTTPProblem(400, "invalid-query", "format must be json or prometheus")
    if form == "prometheus":
        await prometheus_endpoint(system, respond)
        return
    wanted = [c for value in query.get("category", []) for c in value.split(",") if c]
    unknown = sorted(set(wanted) - set(CATEGORIES))
    if unknown:
        raise HTTPProblem(
            400, "invalid-query", f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}"
        )
    if system is None:
        raise HTTPProblem(503, "not-ready", "the server is starting", (("retry-after", "1"),))
    snapshot = await system.ref("metrics").ask(
        GetMetricsSnapshot(categories=wanted), timeout=METRICS_TIMEOUT, expect=MetricsSnapshot
    )
    await respond.json(200, snapshot_json(snapshot))


class MetricsRoutes:
    """``GET /metrics`` and ``GET /v1/metrics`` over the running system."""

    def __init__(self, system: Callable[[], ActorSystem | None]) -> None:
        self._system = system

    async def prometheus(self, request: Request, respond: Responder) -> None:
        """``GET /metrics``: Prometheus text from the metrics actor."""
        await prometheus_endpoint(self._system(), respond)

    async def metrics(self, request: Request, respond: Responder) -> None:
        """``GET /v1/metrics``: JSON (or Prometheus) figures, filtered by category."""
        await metrics_endpoint(self._system(), request, respond)


def snapshot_json(snapshot: MetricsSnapshot) -> dict[str, Any]:
    """The body of ``GET /v1/metrics``: the snapshot's fields, less the categories not asked for.

    The message's type tag and its list of unknown categories (refused with a
    400 before asking) are not part of the HTTP schema.
    """
    fields: dict[str, Any] = msgspec.to_builtins(snapshot)
    for internal in ("type", "unknown_categories"):
        fields.pop(internal, None)
    return {name: value for name, value in fields.items() if value is not None}
