"""A metrics actor held still costs requests nothing: its events are dropped and counted.

In-process (real hypercorn on a free port, the real app and model) so that the
test can hold the metrics actor with an event rather than a sleep.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics.actor import MetricsActor
from actors.metrics.protocol import RequestCompleted
from actors.metrics.state import MetricsSources, cache_figures
from actors.tree import Inference
from api.config.settings import Settings
from runtime import ChildSpec, MailboxConfig, Message, Overflow
from tests.inprocess import replace_child, serving

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CAPACITY = 2
REQUESTS = 8


class HeldMetrics(MetricsActor):
    """The real metrics actor, except that it waits for ``gate`` before each request event."""

    def __init__(self, gate: anyio.Event, inference: Inference) -> None:
        cache = inference.prefix_cache
        assert cache is not None  # the in-process tree
        super().__init__(
            inference.metrics,
            sources=MetricsSources(cache=lambda: cache_figures(cache.statistics())),
        )
        self.gate = gate

    async def handle(self, message: Message) -> Message | None:
        if isinstance(message, RequestCompleted):
            await self.gate.wait()
        return await super().handle(message)


async def test_a_held_metrics_actor_drops_and_counts_instead_of_slowing_requests(
    model_dir: Path,
) -> None:
    gate = anyio.Event()

    def held(inference: Inference) -> Inference:
        mailbox = MailboxConfig(capacity=CAPACITY, overflow=Overflow.REJECT)
        child = ChildSpec("metrics", lambda: HeldMetrics(gate, inference), mailbox=mailbox)
        return replace_child(inference, child)

    settings = Settings(model=str(model_dir), port=0)
    async with (
        serving(settings, held) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        body = {"model": "tiny", "prompt": "held", "max_tokens": 2}
        for _ in range(REQUESTS):
            # The actor never gets past the first event until the gate opens below:
            # every request here completes while it is stuck.
            assert (await http.post("/v1/completions", json=body)).status_code == 200
        assert (await http.get("/health/ready")).status_code == 200
        # One event held in the handler, CAPACITY waiting in the mailbox, the rest dropped.
        dropped = REQUESTS - 1 - CAPACITY
        gate.set()
        snapshot = (await http.get("/v1/metrics?category=requests,throughput")).json()
        assert snapshot["requests"]["dropped_events"] == dropped
        assert snapshot["throughput"]["total_requests"] == REQUESTS - dropped
        text = (await http.get("/metrics")).text
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "troupe_metric_events_dropped"
    ]
    assert [sample.value for sample in family.samples] == [dropped]
