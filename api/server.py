"""``troupe serve``: the actor system behind hypercorn, with a graceful drain.

SIGTERM or SIGINT: stop admitting (new requests get 503), let in-flight
requests finish up to ``drain_timeout``, then stop hypercorn, whose lifespan
shutdown stops the actors in reverse order; exit 0. If the root supervisor
escalates, the server stops the same way and exits 1 with the reason.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import anyio
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from actors.generation.engine import EngineConfig
from actors.intake.actor import IntakeSettings
from actors.kvcache.actor import KVCacheSettings
from actors.kvcache.pressure import PressureConfig
from actors.model.embedded import default_model_dir
from actors.model.loader import LoadedModel, load_model
from actors.tree import InferenceSettings, build_inference
from api.admission import IntakeAdmission
from api.app import TroupeApp, build_asgi, served_name
from api.config import Settings
from runtime import Backoff, SupervisorEscalated
from runtime.breaker import BreakerConfig

log = logging.getLogger("troupe.server")

EXIT_ESCALATED = 1


def model_loader(settings: Settings) -> Callable[[], LoadedModel]:
    """Loads the configured model, or the embedded default generated on first use."""

    def load() -> LoadedModel:
        source = settings.model or str(default_model_dir(settings.model_size))
        return load_model(source)

    return load


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
        engine=EngineConfig(completion_batch_size=settings.max_running),
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        breaker=breaker,
        pressure=marks,
        # The model's name tags persisted entries: files of another model are dropped.
        kvcache=KVCacheSettings(directory=settings.cache_dir, model=served_name(settings)),
        restart_intensity=settings.restart_intensity,
        restart_period=settings.restart_period,
        backoff=Backoff(initial=min(Backoff.initial, cap), cap=cap),
        intake=IntakeSettings(
            queue_max_requests=settings.queue_max_requests,
            queue_max_prompt_tokens=settings.queue_max_prompt_tokens,
            rate_limit_per_second=settings.rate_limit_per_second,
            rate_limit_burst=settings.rate_limit_burst,
        ),
    )


def serve(settings: Settings) -> int:
    """Run the server until a signal or an escalation; return the exit status."""
    return anyio.run(_serve, settings)


async def _serve(settings: Settings) -> int:
    inference = build_inference(model_loader(settings), inference_settings(settings))
    admission = IntakeAdmission(
        {"chat": settings.chat_timeout, "completions": settings.completion_timeout}
    )
    app = TroupeApp(settings, inference, admission)
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # IPv6 literal
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.drain_timeout
    config.accesslog = None
    # hypercorn's own logger, without the extra stderr handler it would add:
    # records go through ours (one line each, tagged with the request id).
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = anyio.Event()
    outcome = {"code": 0}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signal, app, settings, stop)
        tg.start_soon(_on_escalation, app, stop, outcome)
        print(f"mlx-troupe: serving {app.model_name} on http://{host}:{settings.port}")
        sys.stdout.flush()
        # hypercorn types ASGI apps with its own TypedDicts; ours is the same protocol.
        asgi: Any = build_asgi(app)
        await hypercorn_serve(asgi, config, shutdown_trigger=stop.wait)
        tg.cancel_scope.cancel()
    return outcome["code"]


async def _on_signal(app: TroupeApp, settings: Settings, stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: draining", signal.Signals(signum).name)
            drained = await app.drain(settings.drain_timeout)
            if not drained:
                log.warning("drain deadline passed with %d requests in flight", app.in_flight)
            stop.set()
            return


async def _on_escalation(app: TroupeApp, stop: anyio.Event, outcome: dict[str, int]) -> None:
    await app.started.wait()
    assert app.system is not None
    try:
        await app.system.wait()
    except SupervisorEscalated as exc:
        print(f"mlx-troupe: stopping: {exc}", file=sys.stderr)
        outcome["code"] = EXIT_ESCALATED
        app.draining = True
        stop.set()
