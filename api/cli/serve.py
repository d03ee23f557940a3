"""``troupe serve``: the actor system behind hypercorn, with a graceful drain.

SIGTERM or SIGINT: stop admitting (new requests get 503), let in-flight
requests finish up to ``drain_timeout``, then stop hypercorn, whose lifespan
shutdown stops the actors in reverse order; exit 0. If the root supervisor
escalates, the server stops the same way and exits 1 with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

from actors.generation.engine.engine_config import EngineConfig
from actors.generation.supervised.engine_actor import EngineProcessSettings
from actors.intake.protocol import TenantPolicy
from actors.intake.settings import IntakeSettings
from actors.kvcache.control import KVCacheSettings
from actors.kvcache.pressure import PressureConfig
from actors.model.embedded import cache_dir, default_model_dir
from actors.model.gguf import gguf_model_dir, is_gguf_file
from actors.model.loader import LoadedModel, load_model
from actors.model.weights import fit_for_device
from actors.models.tree import build_models_inference
from actors.telemetry import TracingConfig, choose_tracing, start_tracing, stop_tracing
from actors.tree import (
    GENERATION_SHUTDOWN,
    KVCACHE_SHUTDOWN,
    Inference,
    InferenceSettings,
    build_inference,
    build_process_inference,
)
from api.app import TroupeApp, build_asgi
from api.config.model_choice import chosen_model, served_name, warn_if_embedded_by_default
from api.config.models_file import read_models_file
from api.config.settings import EMBEDDED_MODEL, Settings
from api.config.tenants_file import read_tenants_file
from api.config.toml_file import ConfigFile
from api.http.logs import log_lifecycle
from api.http.observe import public_config
from api.http.tracing import RequestTracing
from runtime import Backoff, SupervisorEscalated
from runtime.breaker import BreakerConfig

log = logging.getLogger("troupe.server")

EXIT_ESCALATED = 1
LIFECYCLE_LOG_EVENTS = 1024
"""Lifecycle events the log may fall behind by before some are dropped (and counted)."""
EXIT_START_FAILED = 1
STARTUP_TIMEOUT = 24 * 3600.0
"""Seconds hypercorn waits for the app's startup (the model load): in effect no limit."""
ACTORS_SHUTDOWN = GENERATION_SHUTDOWN + KVCACHE_SHUTDOWN + 5.0
"""Seconds the actors may take to stop after the drain (their own limits, plus slack)."""


def model_loader(settings: Settings) -> Callable[[], LoadedModel]:
    """Loads the configured model, or the embedded default generated on first use."""

    def load() -> LoadedModel:
        marks = PressureConfig.for_machine(settings.memory_high_water, settings.memory_low_water)
        return fit_for_device(
            load_model(model_source(settings)), settings.weights, marks.high_water
        )

    return load


def model_source(settings: Settings) -> str:
    """The model to load: a directory (a GGUF file converted into one) or a hub id; blocking.

    The embedded model is generated, and a GGUF file converted, on first use;
    doing it here, before the tree starts, keeps the engine process and the
    server's tokenizer from converting the same file at once.
    """
    model = chosen_model(settings)
    if model is None:
        return str(default_model_dir(settings.model_size))
    path = Path(model).expanduser()
    if path.is_file() and is_gguf_file(path):
        return str(gguf_model_dir(path, cache_dir()))
    return model


async def build_tree(settings: Settings) -> Inference:
    """The inference tree ``settings`` ask for (engine in its own process, or a thread).

    With a models file, every model gets an engine process of its own.
    """
    process = EngineProcessSettings(hang_timeout=settings.engine_hang_timeout)
    tree = inference_settings(settings)
    if settings.models is not None:
        models = read_models_file(settings.models)
        if any(model.source == EMBEDDED_MODEL for model in models.models):
            embedded = await anyio.to_thread.run_sync(default_model_dir, settings.model_size)
            models = read_models_file(settings.models, str(embedded))
        budget = models.memory_budget or tree.intake.memory_budget
        return build_models_inference(models.models, tree, budget=budget, process=process)
    warn_if_embedded_by_default(settings)
    if settings.engine == "thread":
        return build_inference(model_loader(settings), tree)
    source = await anyio.to_thread.run_sync(model_source, settings)
    return build_process_inference(source, tree, process=process)


def model_tag(settings: Settings) -> str:
    """Names the served model in persisted cache entries: its name and a digest of its config.

    Two models with one name (two checkpoints in directories called ``model``)
    still differ in their ``config.json`` more often than not; entries of a model
    with another tag are dropped instead of being fed to the wrong weights.
    """
    name = served_name(settings)
    model = chosen_model(settings)
    config = Path(model or "").expanduser() / "config.json"
    if model is None or not config.is_file():
        return name
    try:
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    except OSError:
        return name
    return f"{name}@{digest}"


def inference_settings(settings: Settings) -> InferenceSettings:
    """The inference tree's settings from the server's."""
    marks = PressureConfig.for_machine(settings.memory_high_water, settings.memory_low_water)
    breaker = BreakerConfig(
        enabled=settings.cache_breaker,
        failure_threshold=settings.cache_breaker_faults,
        cooldown=settings.cache_breaker_cooldown,
        max_cooldown=max(BreakerConfig.max_cooldown, settings.cache_breaker_cooldown),
        success_threshold=settings.cache_breaker_successes,
    )
    cap = settings.restart_backoff_max
    return InferenceSettings(
        engine=EngineConfig(
            completion_batch_size=settings.max_running,
            max_batched_tokens=settings.max_batched_tokens,
            weights=settings.weights,
            shards=settings.shards,
            shard_hosts=tuple(settings.shard_hosts),
            shard_port=settings.shard_port,
        ),
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        breaker=breaker,
        pressure=marks,
        # The model's name tags persisted entries: files of another model are dropped.
        kvcache=KVCacheSettings(directory=settings.cache_dir, model=model_tag(settings)),
        public_config=public_config(settings, served_name(settings)),
        vllm_metrics=settings.vllm_metrics,
        tracing=tracing_config(settings),
        restart_intensity=settings.restart_intensity,
        restart_period=settings.restart_period,
        backoff=Backoff(initial=min(Backoff.initial, cap), cap=cap),
        intake=IntakeSettings(
            tenants=read_tenants_file(settings.tenants).policy()
            if settings.tenants is not None
            else TenantPolicy(),
            queue_max_requests=settings.queue_max_requests,
            queue_max_prompt_tokens=settings.queue_max_prompt_tokens,
            rate_limit_per_second=settings.rate_limit_per_second,
            rate_limit_burst=settings.rate_limit_burst,
            memory_budget=settings.memory_budget or marks.high_water,
        ),
    )


@dataclass
class _Exit:
    code: int = 0
    stopping: bool = False
    """Set once a signal or an escalation has started the shutdown."""


def tracing_config(settings: Settings) -> TracingConfig | None:
    """Where spans go (the settings and the ``OTEL_*`` variables); ``None``: tracing is off."""
    return choose_tracing(settings.tracing, settings.otlp_endpoint, os.environ).config


def serve(settings: Settings, config_file: ConfigFile | None = None) -> int:
    """Run the server until a signal or an escalation; return the exit status.

    ``config_file``: the TOML file the settings were read from, where the
    console may save settings changed at run time.
    """
    outcome = _Exit()
    tracing = tracing_config(settings)
    provider = start_tracing(tracing, "server") if tracing is not None else None
    try:
        anyio.run(_serve, settings, outcome, config_file)
    except asyncio.CancelledError:
        # hypercorn ends by cancelling its lifespan task and awaiting it; if the
        # task had not quite returned (it is finishing the actors' shutdown),
        # that cancellation surfaces here, after everything has stopped. Only
        # then is it not an error: the exit status is already decided.
        if not outcome.stopping:
            raise
    finally:
        stop_tracing(provider)  # the last requests' spans, before the process exits
    return outcome.code


async def _serve(settings: Settings, outcome: _Exit, config_file: ConfigFile | None) -> None:
    inference = await build_tree(settings)
    tracing = RequestTracing.from_provider() if tracing_config(settings) is not None else None
    app = TroupeApp(settings, inference, config_file, tracing)
    config = hypercorn_config(settings)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        # Subscribed before the system exists, so even the first Started is logged.
        tg.start_soon(log_lifecycle, inference.events.subscribe(LIFECYCLE_LOG_EVENTS))
        tg.start_soon(_on_signal, app, settings, stop, outcome)
        tg.start_soon(_on_escalation, app, stop, outcome)
        tg.start_soon(_announce, app, config.bind[0])
        # hypercorn types ASGI apps with its own TypedDicts; ours is the same protocol.
        asgi: Any = build_asgi(app)
        try:
            await hypercorn_serve(asgi, config, shutdown_trigger=stop.wait)
        except Exception as exc:
            if not _is_lifespan_failure(exc):
                raise
            reason = app.lifespan.start_failure or "startup did not finish"
            log.error("cannot start: %s", reason, extra={"event": "server_start_failed"})
            outcome.code = EXIT_START_FAILED
        tg.cancel_scope.cancel()
    log.info("stopped", extra={"event": "server_stopped", "exit_code": outcome.code})


def hypercorn_config(settings: Settings) -> Config:
    """Hypercorn's configuration for ``settings``: the bind, the drain and the timeouts."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # IPv6 literal
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.drain_timeout
    config.keep_alive_timeout = settings.keep_alive_timeout
    # Loading a large model can take many minutes; the app reports its own failures.
    config.startup_timeout = STARTUP_TIMEOUT
    # The actors stop after the drain, each within its own shutdown timeout.
    config.shutdown_timeout = settings.drain_timeout + ACTORS_SHUTDOWN
    config.accesslog = None
    # hypercorn's own logger, without the extra stderr handler it would add:
    # records go through ours (one line each, tagged with the request id).
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def _announce(app: TroupeApp, bind: str) -> None:
    """Say where the server listens once it can answer, not before the model loads."""
    await app.lifespan.started.wait()
    url = f"http://{bind}"
    print(f"mlx-troupe: serving {app.model_name} on {url}")
    sys.stdout.flush()
    log.info("serving", extra={"event": "server_started", "model": app.model_name, "url": url})


def _is_lifespan_failure(exc: BaseException) -> bool:
    """Whether hypercorn gave up because the app's startup failed or never finished."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_lifespan_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, LifespanFailureError | LifespanTimeoutError)


async def _on_signal(app: TroupeApp, settings: Settings, stop: anyio.Event, outcome: _Exit) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            log.info(
                "received %s: draining", name, extra={"event": "server_draining", "signal": name}
            )
            # Consoles' live streams would hold their connections past the drain.
            app.close_streams()
            drained = await app.intake.drain(settings.drain_timeout)
            log.info(
                "drained %d of %d requests in flight",
                drained.before - drained.left,
                drained.before,
                extra={"event": "server_drained", "in_flight": drained.before},
            )
            if drained.left:
                log.warning(
                    "drain deadline passed with %d requests in flight",
                    drained.left,
                    extra={"event": "drain_incomplete", "in_flight": drained.left},
                )
            outcome.stopping = True
            stop.set()
            return


async def _on_escalation(app: TroupeApp, stop: anyio.Event, outcome: _Exit) -> None:
    await app.lifespan.started.wait()
    system = app.lifespan.system
    assert system is not None
    try:
        await system.wait()
    except SupervisorEscalated as exc:
        # The reason is sanitized at its source (the supervisor's own message).
        log.error("stopping: %s", exc, extra={"event": "server_escalated"})
        outcome.code = EXIT_ESCALATED
        app.close_streams()
        # The actors are gone, intake with them: nothing is admitted any more and
        # requests in flight end with 503 at once. hypercorn stops listening and
        # lets the open exchanges finish (up to --drain-timeout) before closing.
        outcome.stopping = True
        stop.set()
