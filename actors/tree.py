"""The composition root of the inference actors, in either of two shapes.

:func:`build_process_inference` (what ``troupe serve`` runs) puts the engine,
its weights and its prefix cache in a child process of their own:

``troupe`` (one_for_one), in start order
    ``metrics``, ``intake``: as below.
    ``generation``: keeps every request across engine processes and resumes
    them on the next one (:mod:`actors.generation.supervised.router`).
    ``kvcache``: relays the kv-cache protocol to the cache in the engine process.
    ``engine``: owns the engine process; crashes when it dies or hangs, so the
    supervisor's intensity, period and backoff govern its restarts.

:func:`build_inference` keeps the engine on a thread of the server's process
(a native crash there ends the server). It builds the parts that must
outlive actor restarts (the loaded weights, the prefix cache and its memory
monitor) once, and the supervision tree
whose actors share them:

``troupe`` (one_for_one), in start order
    ``metrics``: Prometheus and JSON figures from events that never block senders.
    ``intake``: admission control (queue bounds, rate limits, pressure shedding).
    ``kvcache``: control plane of the prefix cache (stats, pressure, persistence).
    ``generation``: the engine thread and continuous batching.

one_for_one because neither actor holds state the other depends on: the
generation engine uses the prefix cache object directly, which survives a
kv-cache restart, and a generation restart leaves the cache warm. Intake
keeps its bookkeeping in a state object that survives its restarts too.
Metrics keeps its counters in a state object the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.generation.client import GenerationClient
from actors.generation.engine.engine_config import EngineConfig
from actors.generation.engine.faults import FaultPlan, RecoveryTimer
from actors.generation.engine.process_protocol import Boot
from actors.generation.inprocess.actor import ThreadedGeneration
from actors.generation.inprocess.host import ModelHost
from actors.generation.supervised.engine_actor import (
    ENGINE_ACTOR,
    EngineActor,
    EngineProcessSettings,
)
from actors.generation.supervised.engine_process import Spawner
from actors.generation.supervised.link import RelayCache
from actors.generation.supervised.router import GenerationRouter
from actors.intake.actor import intake_child
from actors.intake.settings import IntakeSettings
from actors.intake.state import IntakeState
from actors.kvcache.actor import KVCacheSettings, kvcache_child
from actors.kvcache.pressure import MemoryMonitor, PressureConfig
from actors.kvcache.relay import RelayedCacheActor
from actors.kvcache.store import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, PrefixCache
from actors.metrics.actor import metrics_child
from actors.metrics.registry import Load
from actors.metrics.state import MetricsSources, MetricsState, cache_figures
from actors.model.loader import LoadedModel, load_tokenizer
from actors.telemetry import TracingConfig
from runtime import (
    ActorSystem,
    Backoff,
    ChildSpec,
    Clock,
    MailboxConfig,
    Strategy,
    SupervisorSpec,
    SystemClock,
)
from runtime.breaker import BreakerConfig, CircuitBreaker
from runtime.events import EventBus
from runtime.lifecycle import Event

GENERATION_SHUTDOWN = 30.0
"""Seconds the generation actor gets to stop: joining the engine thread waits
for the step in progress, which on a CPU can take a while for long prompts."""
ROUTER_MAILBOX = MailboxConfig(capacity=65536)
"""Requests and every step's events pass through these mailboxes: room for a burst."""
METRICS_EVENTS = 1024
"""Lifecycle events the metrics actor may fall behind by before some are dropped."""
KVCACHE_SHUTDOWN = 60.0
"""Seconds the kv-cache actor gets to stop: a save of a large cache runs in a
worker thread that cannot be cancelled."""


@dataclass(frozen=True)
class InferenceSettings:
    """What the inference tree needs to know; defaults suit the embedded model."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    cache_max_entries: int = DEFAULT_MAX_ENTRIES
    cache_max_bytes: int = DEFAULT_MAX_BYTES
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    pressure: PressureConfig | None = None
    """Memory marks; ``None``: 85 % and 75 % of physical memory."""
    kvcache: KVCacheSettings = field(default_factory=KVCacheSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    public_config: dict[str, str] = field(default_factory=dict)
    """Settings to publish as the config info metric (the caller leaves out secrets)."""
    vllm_metrics: bool = True
    """Also expose the vLLM-compatible ``vllm:*`` metric families."""
    tracing: TracingConfig | None = None
    """Where engine processes export their spans; ``None``: tracing is off."""
    restart_intensity: int = 5
    """Restarts of the tree's children allowed within ``restart_period`` (OTP's intensity)."""
    restart_period: float = 10.0
    """The sliding window of ``restart_intensity``, seconds."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delays between consecutive restarts of one child."""


@dataclass(frozen=True)
class ModelRoute:
    """Where requests for one served model go."""

    name: str
    """The served name ("": the single model, named by the server)."""
    generation: str
    """Its generation actor's id."""
    tokenizer: Callable[[], Any]
    """Its tokenizer (loads on first call; blocking)."""
    kvcache: str = "kvcache"
    """Its kv-cache actor's id."""


@dataclass
class Inference:
    """The long-lived parts, and the supervision tree built around them."""

    host: ModelHost[LoadedModel] | None
    """The weights, when the engine runs in this process (``None``: in its own)."""
    tokenizer: Callable[[], Any]
    """The tokenizer for prompts (loads on first call; blocking)."""
    prefix_cache: PrefixCache | None
    """The prefix cache, when the engine runs in this process."""
    monitor: MemoryMonitor | None
    intake: IntakeState
    metrics: MetricsState
    events: EventBus[Event]
    """The lifecycle bus; start the system with it (``ActorSystem(spec, events=...)``)."""
    spec: SupervisorSpec
    faults: FaultPlan
    """Engine faults armed by drills; they survive engine restarts."""
    recovery: RecoveryTimer
    """Crash-to-next-token times of the engine."""
    routes: list[ModelRoute] = field(default_factory=list)
    """Every served model's actors (one, named "", unless several models are served)."""

    def __post_init__(self) -> None:
        if not self.routes:
            self.routes = [ModelRoute("", "generation", self.tokenizer)]

    def client(self, system: ActorSystem) -> GenerationClient:
        """A client of the generation actor of a system started from :attr:`spec`."""
        return GenerationClient(system.ref("generation"), system.open_inbox)


def build_inference(
    load: Callable[[], LoadedModel],
    settings: InferenceSettings | None = None,
    *,
    clock: Clock | None = None,
) -> Inference:
    """Build the shared parts and the tree; nothing is loaded until the tree starts."""
    settings = settings or InferenceSettings()
    clock = clock or SystemClock()
    host: ModelHost[LoadedModel] = ModelHost(load)
    cache = PrefixCache(
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        breaker=CircuitBreaker(settings.breaker, clock=clock),
    )
    monitor = MemoryMonitor(cache, settings.pressure or PressureConfig.for_machine())
    kvcache = kvcache_child(cache, monitor=monitor, settings=settings.kvcache)
    faults, recovery = FaultPlan(), RecoveryTimer()
    latest: list[ThreadedGeneration] = []  # the newest incarnation, for the metrics' load figures

    def new_generation() -> ThreadedGeneration:
        actor = ThreadedGeneration(
            host,
            prefix_store=cache,
            config=settings.engine,
            faults=faults,
            recovery=recovery,
            cache_bytes=lambda: cache.statistics().nbytes,
        )
        latest[:] = [actor]
        return actor

    generation = ChildSpec("generation", new_generation, shutdown=GENERATION_SHUTDOWN)
    intake = IntakeState(settings.intake)
    events = EventBus[Event]()
    metrics = MetricsState(clock, config=settings.public_config, vllm_names=settings.vllm_metrics)
    sources = MetricsSources(
        cache=lambda: cache_figures(cache.statistics(), under_pressure=monitor.under_pressure),
        load=lambda: _engine_load(latest),
    )
    spec = supervised(
        "troupe",
        settings,
        [
            # Metrics starts first, so it sees every other actor's Started event, and
            # stops last, so it counts until the end.
            metrics_child(metrics, lambda: events.subscribe(METRICS_EVENTS), sources=sources),
            # Intake starts next and stops just before it, so late releases still land.
            intake_child(intake, pressure=lambda: monitor.under_pressure),
            _with_shutdown(kvcache, KVCACHE_SHUTDOWN),
            generation,
        ],
    )
    return Inference(
        host,
        lambda: host.get().tokenizer,
        cache,
        monitor,
        intake,
        metrics,
        events,
        spec,
        faults,
        recovery,
    )


def build_process_inference(
    model: str,
    settings: InferenceSettings | None = None,
    *,
    process: EngineProcessSettings | None = None,
    clock: Clock | None = None,
) -> Inference:
    """The tree with the engine in a child process that loads ``model`` (a directory or id)."""
    settings = settings or InferenceSettings()
    clock = clock or SystemClock()
    faults, recovery = FaultPlan(), RecoveryTimer()
    boot = Boot(
        model=model,
        engine=settings.engine,
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        breaker=settings.breaker,
        pressure=settings.pressure or PressureConfig.for_machine(),
        cache=settings.kvcache,
        heartbeat_interval=(process or EngineProcessSettings()).heartbeat_interval,
        tracing=settings.tracing,
    )
    intake = IntakeState(settings.intake)
    events = EventBus[Event]()
    metrics = MetricsState(clock, config=settings.public_config, vllm_names=settings.vllm_metrics)
    spawner = Spawner()  # one engine process kept started ahead, for fast restarts
    spec = supervised(
        "troupe",
        settings,
        [
            metrics_child(metrics, lambda: events.subscribe(METRICS_EVENTS)),
            intake_child(intake),
            # Before the engine, which tells it when a process is up; stopped
            # after it, so that what the engine still sends is delivered.
            ChildSpec(
                "generation",
                lambda: GenerationRouter(faults=faults, recovery=recovery),
                mailbox=ROUTER_MAILBOX,
            ),
            ChildSpec(
                "kvcache",
                lambda: RelayedCacheActor(ENGINE_ACTOR, RelayCache),
                shutdown=KVCACHE_SHUTDOWN,
            ),
            ChildSpec(
                ENGINE_ACTOR,
                lambda: EngineActor(boot, process, spawner=spawner),
                shutdown=GENERATION_SHUTDOWN,
                mailbox=ROUTER_MAILBOX,
            ),
        ],
    )
    return Inference(
        None,
        tokenizer_loader(model),
        None,
        None,
        intake,
        metrics,
        events,
        spec,
        faults,
        recovery,
    )


def supervised(
    name: str, settings: InferenceSettings, children: list[ChildSpec | SupervisorSpec]
) -> SupervisorSpec:
    """A one_for_one supervisor of ``children`` with the tree's intensity, period and backoff."""
    return SupervisorSpec(
        name,
        children,
        strategy=Strategy.ONE_FOR_ONE,
        intensity=settings.restart_intensity,
        period=settings.restart_period,
        backoff=settings.backoff,
    )


def tokenizer_loader(model: str) -> Callable[[], Any]:
    """Loads ``model``'s tokenizer once, on first call (thread-safe)."""
    lock = threading.Lock()
    loaded: list[Any] = []

    def tokenizer() -> Any:
        with lock:
            if not loaded:
                loaded.append(load_tokenizer(model))
            return loaded[0]

    return tokenizer


def _engine_load(latest: list[ThreadedGeneration]) -> Load | None:
    """The engine's running and waiting counts, read directly (never an ask to a busy actor)."""
    counts = latest[0].load() if latest else None
    return None if counts is None else Load(running=counts[0], waiting=counts[1])


def _with_shutdown(spec: ChildSpec, shutdown: float) -> ChildSpec:
    return ChildSpec(spec.id, spec.factory, spec.restart, shutdown, spec.mailbox)
