"""OpenTelemetry tracing: where spans go, and the provider of one process.

Tracing is off unless asked for (``--tracing``, ``--otlp-endpoint``, or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
variables). The server and its engine processes each run a provider of their
own that exports over OTLP to the same collector; the engine's spans join the
request's trace through the W3C ``traceparent`` carried by ``Generate``.

The SDK is imported only when tracing is on. Imports no anyio:
the engine process runs this.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("troupe.telemetry")

Protocol = Literal["http/protobuf", "grpc"]
PROTOCOLS: tuple[str, ...] = ("http/protobuf", "grpc")
DEFAULT_ENDPOINTS: dict[str, str] = {
    "http/protobuf": "http://localhost:4318/v1/traces",
    "grpc": "http://localhost:4317",
}
"""The OTLP defaults of the specification, per protocol."""
SERVICE_NAME = "mlx-troupe"


class TracingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where one process exports its spans (sent to the engine process in its boot frame)."""

    endpoint: str
    """The traces endpoint, used as it is (``.../v1/traces`` for OTLP/HTTP)."""
    protocol: Protocol = "http/protobuf"
    service_name: str = SERVICE_NAME


class TracingChoice(msgspec.Struct, frozen=True, kw_only=True):
    """What the settings and the environment ask for: a config, or the problems found."""

    config: TracingConfig | None = None
    problems: list[str] = msgspec.field(default_factory=list)


def choose_tracing(enabled: bool, endpoint: str | None, env: Mapping[str, str]) -> TracingChoice:
    """Resolve our settings and the standard ``OTEL_*`` variables into a config.

    Precedence, per the OpenTelemetry specification: the signal-specific
    variables over the generic ones; our own ``endpoint`` setting over both.
    A generic OTLP/HTTP endpoint is a base URL, to which ``/v1/traces`` is added.
    """
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    named = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (named or "").strip() or "http/protobuf"
    if not (enabled or endpoint or traces or generic):
        return TracingChoice()
    problems = []
    if protocol not in PROTOCOLS:
        problems.append(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use "
            + " or ".join(repr(p) for p in PROTOCOLS)
        )
        protocol = "http/protobuf"
    if endpoint:
        chosen = endpoint
    elif traces:
        chosen = traces
    elif generic:
        chosen = generic.rstrip("/") + "/v1/traces" if protocol == "http/protobuf" else generic
    else:
        chosen = DEFAULT_ENDPOINTS[protocol]
    if not chosen.startswith(("http://", "https://")):
        problems.append("the OTLP endpoint must be an http:// or https:// URL")
    if problems:
        return TracingChoice(problems=problems)
    service = env.get("OTEL_SERVICE_NAME", "").strip() or SERVICE_NAME
    return TracingChoice(
        config=TracingConfig(endpoint=chosen, protocol=protocol, service_name=service)  # type: ignore[arg-type]  # reason: checked against PROTOCOLS above
    )


def start_tracing(config: TracingConfig, role: str) -> TracerProvider:
    """Install this process's tracer provider, exporting in batches to ``config``.

    ``role`` (``server`` or ``engine``) tells the two processes' spans apart.
    Batching keeps export off the request path: spans wait in a bounded
    queue (``OTEL_BSP_*`` tune it) and a full queue drops, never blocks.
    """
    # The SDK loads only when tracing is on: the CLI's --help and check-config
    # import this module, and the SDK and its exporters add 50-200 ms of imports.
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create(
        {"service.name": config.service_name, "troupe.role": role, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(config)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcExporter,
        )

        insecure = config.endpoint.startswith("http://")
        return GrpcExporter(endpoint=config.endpoint, insecure=insecure)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter(endpoint=config.endpoint)


def stop_tracing(provider: TracerProvider | None, timeout_s: float = 2.0) -> None:
    """Export what is buffered, waiting at most ``timeout_s``; never raises.

    The SDK's flush runs the export in the caller's thread and retries an
    unreachable collector for up to its exporter timeout (10 s), whatever
    timeout it is given; so the flush runs on a daemon thread, and the caller
    waits for it only so long. The process is about to exit: spans the
    collector could not take by then are lost, and the exit is not held up.
    """
    if provider is None:
        return
    flusher = threading.Thread(
        target=_flush, args=(provider, timeout_s), name="troupe-trace-flush", daemon=True
    )
    flusher.start()
    flusher.join(timeout_s)


def _flush(provider: TracerProvider, timeout_s: float) -> None:
    try:
        provider.force_flush(int(timeout_s * 1000))
    except Exception as exc:  # an unreachable collector must not fail a clean exit
        log.warning("traces not flushed: %s", type(exc).__name__)
