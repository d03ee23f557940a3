"""The metrics actor: request events and lifecycle events in, snapshots and Prometheus out.

Everything it counts lives in a :class:`~actors.metrics.state.MetricsState`
built once by the composition root, so a crash of the actor loses no totals. The actor follows
the system's lifecycle events through a subscription factory it is given
(``system.subscribe``), so the runtime needs no knowledge of metrics. Figures
owned by others (the prefix cache, the engine's load, memory) are read at
query time through :class:`MetricsSources`.

Wiring, in the composition root::

    state = MetricsState(clock, config={"model": name})
    spec = metrics_child(state, system_subscribe, sources=MetricsSources(
        cache=lambda: cache_figures(prefix_cache.statistics())))

``system_subscribe`` must be callable before the system exists, e.g. a lambda
that reads the system from a variable set once it is built. Make the metrics
actor the tree's first child: it subscribes when it starts, and then sees the
``Started`` event of every actor after it (and it stops last).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from actors.memory import MemoryFigures
from actors.metrics.protocol import (
    ConfigChanged,
    EngineReport,
    GetMetricsSnapshot,
    PrometheusText,
    RenderPrometheus,
    RequestCancelled,
    RequestCompleted,
    RequestShed,
)
from actors.metrics.registry import CacheFigures, Load
from actors.metrics.state import MetricsSources, MetricsState
from actors.metrics.vllm_compat import EngineFigures
from runtime.actor import Actor
from runtime.events import Subscription
from runtime.lifecycle import Event
from runtime.mailbox import MailboxConfig, Overflow
from runtime.messages import Message
from runtime.node import ExitKind
from runtime.spec import ChildSpec

DEFAULT_MAILBOX = 8192
"""Room for bursts: every finished request tells one event, and a full mailbox drops."""


class MetricsActor(Actor):
    """Counts request and lifecycle events; answers snapshots and Prometheus renders."""

    def __init__(
        self,
        state: MetricsState,
        subscribe: Callable[[], Subscription[Event]] | None = None,
        sources: MetricsSources | None = None,
    ) -> None:
        """Create an incarnation.

        Args:
            state: The durable state, built once by the composition root.
            subscribe: Opens a lifecycle-event subscription (``system.subscribe``);
                ``None``: actor states and restarts are not followed.
            sources: Figures read at query time; ``None``: memory only.
        """
        self.state = state
        self._subscribe = subscribe
        self._sources = sources or MetricsSources()
        self._subscription: Subscription[Event] | None = None
        self._reports: dict[str, EngineReport] = {}
        """The latest report of each model's engine (one, under "", with a single model)."""
        if sources is None:  # nothing to read: the figures are pushed (EngineReport)
            self._sources = MetricsSources(
                cache=self._reported_cache,
                load=self._reported_load,
                engine_memory=self._reported_engine_memory,
                engines=self._reported_engines,
            )

    async def on_start(self) -> None:
        """Note the baseline memory; follow lifecycle events in a task of this incarnation."""
        self.state.mark_start(self._sources)
        if self._subscribe is not None:
            self._subscription = self._subscribe()
            self.ctx.start_soon(self._follow, self._subscription, name=f"{self.ctx.path}:events")

    async def _follow(self, subscription: Subscription[Event]) -> None:
        try:
            async for event in subscription:
                self.state.observe_lifecycle(event)
        except anyio.ClosedResourceError:  # on_stop closed it: this incarnation is ending
            return

    def _catch_up(self) -> None:
        """Apply every buffered lifecycle event, so an answer reflects all published so far."""
        if self._subscription is None:
            return
        while True:
            try:
                event = self._subscription.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self.state.observe_lifecycle(event)

    async def handle(self, message: Message) -> Message | None:
        """Count an event, or answer a query with figures read now."""
        match message:
            case RequestCompleted() | RequestShed() | RequestCancelled():
                self.state.observe(message)
            case EngineReport(model=model):
                self._reports[model] = message
            case ConfigChanged(config=config):
                self.state.registry.show_config(config)
            case GetMetricsSnapshot(categories=categories):
                self._catch_up()
                self.state.refresh(self._sources, dropped=self.ctx.undelivered())
                return self.state.snapshot(categories)
            case RenderPrometheus():
                self._catch_up()
                self.state.refresh(self._sources, dropped=self.ctx.undelivered())
                return PrometheusText(text=self.state.registry.render())
        # Anything else is ignored: a stray message must not crash the metrics.
        return None

    def _reported_cache(self) -> CacheFigures | None:
        reports = list(self._reports.values())
        if not reports:
            return None
        breakers = {report.cache_breaker for report in reports}
        return CacheFigures(
            queries=sum(report.cache_queries for report in reports),
            hits=sum(report.cache_hits for report in reports),
            hit_tokens=sum(report.cache_hit_tokens for report in reports),
            evictions=sum(report.cache_evictions for report in reports),
            nbytes=sum(report.cache_nbytes for report in reports),
            entries=sum(report.cache_entries for report in reports),
            # One model's open breaker is what an operator must see.
            breaker_state=breakers.pop() if len(breakers) == 1 else "open",
            query_tokens=sum(report.cache_query_tokens for report in reports),
            max_bytes=sum(report.cache_max_bytes for report in reports),
            under_pressure=any(report.under_pressure for report in reports),
        )

    def _reported_engines(self) -> dict[str, EngineFigures]:
        return {
            model: EngineFigures(
                running=report.running,
                waiting=report.waiting,
                cache_query_tokens=report.cache_query_tokens,
                cache_hit_tokens=report.cache_hit_tokens,
                cache_bytes=report.cache_nbytes,
                cache_max_bytes=report.cache_max_bytes,
            )
            for model, report in self._reports.items()
        }

    def _reported_engine_memory(self) -> MemoryFigures | None:
        figures = [r.engine_memory for r in self._reports.values() if r.engine_memory]
        if len(figures) <= 1:
            return figures[0] if figures else None
        return MemoryFigures(
            **{
                name: sum(getattr(f, name) or 0 for f in figures)
                for name in MemoryFigures.__struct_fields__
            }
        )

    def _reported_load(self) -> Load | None:
        reports = list(self._reports.values())
        if not reports:
            return None
        return Load(
            running=sum(report.running for report in reports),
            waiting=sum(report.waiting for report in reports),
        )

    async def on_stop(self, exit_kind: ExitKind) -> None:
        """Unsubscribe, so the bus stops buffering events for a dead incarnation."""
        if self._subscription is not None:
            await self._subscription.aclose()


def metrics_child(
    state: MetricsState,
    subscribe: Callable[[], Subscription[Event]] | None = None,
    *,
    sources: MetricsSources | None = None,
    child_id: str = "metrics",
    capacity: int = DEFAULT_MAILBOX,
) -> ChildSpec:
    """The child spec of a metrics actor whose every incarnation shares ``state``.

    Args:
        state: The durable state, built once by the composition root.
        subscribe: Opens a lifecycle-event subscription, e.g. ``lambda: system.subscribe()``.
        sources: Figures read at query time.
        child_id: The actor's id (producers look up ``metrics``).
        capacity: Mailbox size; overflow is rejected so producers drop, never wait.

    Returns:
        A permanent child with the default 5 s shutdown.
    """
    return ChildSpec(
        child_id,
        lambda: MetricsActor(state, subscribe, sources),
        mailbox=MailboxConfig(capacity=capacity, overflow=Overflow.REJECT),
    )
