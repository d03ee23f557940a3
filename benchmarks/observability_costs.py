"""What recording one request costs, each part timed alone over many repetitions.

The per-event half of :mod:`benchmarks.observability_bench`: ``record`` (the
non-blocking send to the metrics actor), the actor's accounting of the event,
the metrics actor end to end (send until a later snapshot answers), the audit
``submit`` and the audit thread's SQLite write per row, and one JSON log line.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from actors.audit import AuditRecord, AuditWriter
from actors.metrics.actor import metrics_child
from actors.metrics.protocol import GetMetricsSnapshot, MetricsSnapshot, RequestCompleted, record
from actors.metrics.state import MetricsState
from api.http.logs import JsonFormatter
from api.http.middleware import RequestIdFilter
from runtime import ActorSystem, SupervisorSpec, SystemClock


def event(n: int) -> RequestCompleted:
    """A typical finished request's event (64 tokens, capped gap samples)."""
    return RequestCompleted(
        endpoint="completions",
        status=200,
        model="tiny",
        duration_s=0.25 + n % 7 * 0.01,
        ttft_s=0.02,
        inter_token_s=[0.003 + (n + i) % 5 * 0.0005 for i in range(63)],
        queue_s=0.001,
        prompt_tokens=12,
        completion_tokens=64,
        finish_reason="length",
    )


def per_call_us(run: Callable[[int], object], count: int) -> float:
    """Microseconds per call of ``run(i)`` for ``i`` in ``range(count)``."""
    gc.collect()
    start = time.perf_counter()
    for i in range(count):
        run(i)
    return (time.perf_counter() - start) / count * 1e6


async def metrics_costs(count: int) -> dict[str, float]:
    """``record`` alone, the accounting alone, and the metrics actor end to end."""
    events = [event(n) for n in range(count)]
    state = MetricsState(SystemClock())
    accounting = per_call_us(lambda i: state.observe(events[i]), count)
    shared = MetricsState(SystemClock())
    tree = SupervisorSpec("root", [metrics_child(shared, capacity=count + 1)])
    async with ActorSystem(tree) as system:
        ref = system.ref("metrics")
        gc.collect()
        start = time.perf_counter()
        for i in range(count):
            record(ref, events[i])
        sent = time.perf_counter()
        snapshot = await ref.ask(GetMetricsSnapshot(), timeout=60, expect=MetricsSnapshot)
        done = time.perf_counter()
        undelivered = system.services.dead_letters.undelivered("metrics")
    assert undelivered == 0 and snapshot.throughput is not None
    assert snapshot.throughput.total_requests == count
    return {
        "record_us": (sent - start) / count * 1e6,
        "accounting_us": accounting,
        "actor_end_to_end_us": (done - start) / count * 1e6,
    }


def audit_costs(work: Path, count: int) -> dict[str, float]:
    """``submit`` alone, and the writer's throughput to SQLite per row."""
    rows = [
        AuditRecord(
            request_id=f"r{n}",
            ts=time.time(),
            model="tiny",
            endpoint="completions",
            status=200,
            finish_reason="length",
            duration_ms=250.0,
            ttft_ms=20.0,
            prompt_tokens=12,
            completion_tokens=64,
            key_hash=None,
        )
        for n in range(count)
    ]
    with AuditWriter(work / "costs.sqlite", queue_size=count + 1) as writer:
        gc.collect()
        start = time.perf_counter()
        for row in rows:
            writer.submit(row)
        submitted = time.perf_counter()
        assert writer.flush(timeout=120)
        written = time.perf_counter()
        assert writer.statistics().written == count
    return {
        "audit_submit_us": (submitted - start) / count * 1e6,
        "audit_written_per_row_us": (written - start) / count * 1e6,
    }


def log_costs(work: Path, count: int) -> dict[str, float]:
    """One JSON request line through the logging machinery into a file."""
    log = logging.getLogger("benchmark.requests")
    handler = logging.FileHandler(work / "costs.log")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    fields = {"event": "request", "method": "POST", "path": "/v1/completions", "status": 200,
              "duration_ms": 250.0, "endpoint": "completions", "model": "tiny",
              "finish_reason": "length", "ttft_ms": 20.0, "prompt_tokens": 12,
              "completion_tokens": 64, "cached_tokens": 0, "error_type": None}  # fmt: skip
    try:
        return {"log_line_us": per_call_us(lambda i: log.info("POST 200", extra=fields), count)}
    finally:
        log.removeHandler(handler)
        handler.close()
