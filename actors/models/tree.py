"""The inference tree of a server that serves several models.

``troupe`` (one_for_one), in start order
    ``metrics``, ``intake``: shared by every model (one budget, one queue).
    ``models``: the keeper (:mod:`actors.models.keeper`): loads on demand,
    unloads idle models after their keep-alive and the least recently used one
    when another would not fit the memory budget.
    ``model@NAME`` (one_for_one), one subtree per model: ``generation@NAME``
    (keeps its requests across engine processes), ``kvcache@NAME`` (relays to
    the prefix cache in its engine process) and ``engine@NAME`` (owns its
    engine process, started empty unless the model is preloaded).

Each model's subtree has its own restart intensity, so a model whose engine
keeps dying is restarted on its own clock; a model that cannot be loaded does
not crash at all (its requests fail with a clear error), so it never costs the
others a restart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from actors.generation.engine.faults import FaultPlan, RecoveryTimer
from actors.generation.engine.process_protocol import Boot
from actors.generation.supervised.engine_actor import (
    EngineActor,
    EnginePeers,
    EngineProcessSettings,
)
from actors.generation.supervised.engine_process import Spawner
from actors.generation.supervised.link import RelayCache
from actors.generation.supervised.on_demand import ModelPeers
from actors.generation.supervised.router import GenerationRouter
from actors.intake.actor import intake_child
from actors.intake.state import IntakeState
from actors.kvcache.pressure import PressureConfig
from actors.kvcache.relay import RelayedCacheActor
from actors.metrics.actor import metrics_child
from actors.metrics.state import MetricsState
from actors.models.keeper import KeptModel, ModelBook, ModelKeeper
from actors.models.protocol import KEEPER, engine_id, generation_id, kvcache_id
from actors.models.served import ServedModel
from actors.tree import (
    GENERATION_SHUTDOWN,
    KVCACHE_SHUTDOWN,
    METRICS_EVENTS,
    ROUTER_MAILBOX,
    Inference,
    InferenceSettings,
    ModelRoute,
    supervised,
    tokenizer_loader,
)
from runtime import ChildSpec, Clock, SupervisorSpec, SystemClock
from runtime.events import EventBus
from runtime.lifecycle import Event


def build_models_inference(
    models: list[ServedModel],
    settings: InferenceSettings | None = None,
    *,
    budget: int | None = None,
    process: EngineProcessSettings | None = None,
    clock: Clock | None = None,
) -> Inference:
    """The tree for ``models``; ``budget``: bytes their weights may take together."""
    if not models:
        raise ValueError("name at least one model")
    settings = settings or InferenceSettings()
    clock = clock or SystemClock()
    faults, recovery = FaultPlan(), RecoveryTimer()
    book = ModelBook(
        [KeptModel(m.name, m.keep_alive, size_estimate(m.source)) for m in models], budget
    )
    intake = IntakeState(settings.intake)
    events = EventBus[Event]()
    metrics = MetricsState(clock, config=settings.public_config, vllm_names=settings.vllm_metrics)
    subtrees = [_model_subtree(model, settings, process, faults, recovery) for model in models]
    spec = supervised(
        "troupe",
        settings,
        [
            metrics_child(metrics, lambda: events.subscribe(METRICS_EVENTS)),
            intake_child(intake),
            ChildSpec(KEEPER, lambda: ModelKeeper(book)),
            *subtrees,
        ],
    )
    routes = [
        ModelRoute(m.name, generation_id(m.name), tokenizer_loader(m.source), kvcache_id(m.name))
        for m in models
    ]
    return Inference(
        None,
        routes[0].tokenizer,
        None,
        None,
        intake,
        metrics,
        events,
        spec,
        faults,
        recovery,
        routes,
    )


def _model_subtree(
    model: ServedModel,
    settings: InferenceSettings,
    process: EngineProcessSettings | None,
    faults: FaultPlan,
    recovery: RecoveryTimer,
) -> SupervisorSpec:
    name = model.name
    engine = settings.engine
    if model.weights is not None:
        engine = dataclasses.replace(engine, weights=model.weights)
    cache = settings.kvcache
    if cache.directory is not None:  # one directory per model: their files never mix
        cache = dataclasses.replace(cache, directory=str(Path(cache.directory) / name))
    boot = Boot(
        model=model.source,
        engine=engine,
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        breaker=settings.breaker,
        pressure=settings.pressure or PressureConfig.for_machine(),
        cache=dataclasses.replace(cache, model=model.source),
        heartbeat_interval=(process or EngineProcessSettings()).heartbeat_interval,
        tracing=settings.tracing,
    )
    # No spare process per model: an idle Python with MLX imported costs memory
    # that several models would multiply; a restart pays about a second more.
    spawner = Spawner(spare=False)
    peers = ModelPeers(model=name, engine=engine_id(name), keeper=KEEPER)
    engine_peers = EnginePeers(
        generation=generation_id(name), keeper=KEEPER, model=name, preload=model.preload
    )
    return supervised(
        f"model@{name}",
        settings,
        [
            ChildSpec(
                generation_id(name),
                lambda: GenerationRouter(faults=faults, recovery=recovery, peers=peers),
                mailbox=ROUTER_MAILBOX,
            ),
            ChildSpec(
                kvcache_id(name),
                lambda: RelayedCacheActor(engine_id(name), RelayCache),
                shutdown=KVCACHE_SHUTDOWN,
            ),
            ChildSpec(
                engine_id(name),
                lambda: EngineActor(boot, process, spawner=spawner, peers=engine_peers),
                shutdown=GENERATION_SHUTDOWN,
                mailbox=ROUTER_MAILBOX,
            ),
        ],
    )


def size_estimate(source: str) -> int:
    """Bytes a model's weight files take on disk (0 for a hub id not yet downloaded)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return 0
