"""What the generation actor over an engine process tells the metrics and intake.

The metrics cannot read another process, so the generation actor pushes the
engine's load and prefix-cache figures on every heartbeat and before it
delivers any request's end; intake hears of memory pressure when it flips and
of the model's memory figures (for memory-aware admission) when they change.
With several models, each model's generation actor reports under its name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from actors.generation.engine.process_protocol import Heartbeat, Ready
from actors.intake.protocol import ReportMemory, ReportPressure
from actors.kvcache.protocol import CacheStats
from actors.metrics.protocol import EngineReport
from runtime.context import ActorContext
from runtime.errors import DeliveryError

METRICS = "metrics"
INTAKE = "intake"


@dataclass
class RouterReports:
    """The last figures sent, so that only changes are sent again."""

    model: str = ""
    pressure: bool = False
    memory: ReportMemory | None = None

    def report(
        self,
        ctx: ActorContext,
        cache: CacheStats,
        load: tuple[int, int],
        beat: Heartbeat | None,
        ready: Ready | None,
    ) -> None:
        """Tell the metrics the figures, and intake what changed."""
        report = EngineReport(
            model=self.model,
            running=load[0],
            waiting=load[1],
            cache_queries=cache.queries,
            cache_hits=cache.hits,
            cache_hit_tokens=cache.hit_tokens,
            cache_evictions=cache.evictions,
            cache_nbytes=cache.nbytes,
            cache_entries=cache.entries,
            cache_breaker=str(cache.breaker.state.value),
            cache_query_tokens=cache.query_tokens,
            cache_max_bytes=cache.max_bytes,
            under_pressure=cache.under_pressure,
            engine_memory=beat.memory if beat is not None else None,
        )
        with contextlib.suppress(DeliveryError, LookupError):  # a full metrics mailbox drops
            ctx.lookup(METRICS).tell_nowait(report)
        if cache.under_pressure != self.pressure:
            self.pressure = cache.under_pressure
            with contextlib.suppress(DeliveryError, LookupError):
                ctx.lookup(INTAKE).tell_nowait(ReportPressure(under_pressure=self.pressure))
        if ready is not None:
            self.memory_now(ctx, ready, ready.weights_bytes + cache.nbytes)

    def memory_now(self, ctx: ActorContext, ready: Ready, model_bytes: int) -> None:
        """Tell intake the model's memory figures when they change (0 bytes: unloaded)."""
        memory = ReportMemory(
            model=self.model, kv_bytes_per_token=ready.kv_bytes_per_token, model_bytes=model_bytes
        )
        if memory == self.memory:
            return
        with contextlib.suppress(DeliveryError, LookupError):
            ctx.lookup(INTAKE).tell_nowait(memory)
            self.memory = memory
