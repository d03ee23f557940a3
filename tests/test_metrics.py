"""The metrics actor: windows, the Prometheus registry, snapshots, drops and lifecycle events."""

from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from actors.generation.engine.requests import Admission, admit
from actors.generation.protocol import FinishReason, Generate
from actors.memory import MemoryFigures
from actors.metrics.actor import metrics_child
from actors.metrics.protocol import (
    CATEGORIES,
    GetMetricsSnapshot,
    MemorySnapshot,
    MetricsSnapshot,
    PrometheusText,
    RenderPrometheus,
    RequestCancelled,
    RequestCompleted,
    RequestShed,
    cap_samples,
    record,
)
from actors.metrics.registry import CacheFigures, Load, safe_config
from actors.metrics.state import MetricsSources, MetricsState
from actors.metrics.windows import RollingRate, SlidingWindow, percentile
from actors.model import LoadedModel
from api.http.observe import snapshot_json
from runtime import (
    NO_BACKOFF,
    Actor,
    ActorDied,
    ActorSystem,
    ChildSpec,
    ManualClock,
    Message,
    SupervisorSpec,
    decode,
    encode,
)
from runtime.events import Subscription
from runtime.lifecycle import Event

pytestmark = pytest.mark.timeout(60)

MIB = 1024**2

FAMILIES = set(
    """
    troupe_requests troupe_time_to_first_token_seconds troupe_inter_token_latency_seconds
    troupe_request_duration_seconds troupe_queue_time_seconds troupe_prompt_tokens
    troupe_generation_tokens troupe_requests_running troupe_requests_waiting
    troupe_requests_shed troupe_requests_cancelled troupe_cache_queries troupe_cache_hits
    troupe_cache_hit_tokens troupe_cache_evictions troupe_cache_bytes troupe_cache_logical_bytes
    troupe_cache_entries
    troupe_cache_breaker_state troupe_actor_restarts troupe_actor_state
    troupe_process_resident_memory_bytes troupe_process_resident_memory_peak_bytes
    troupe_engine_resident_memory_bytes troupe_engine_resident_memory_peak_bytes
    troupe_mlx_active_memory_bytes troupe_mlx_peak_memory_bytes troupe_mlx_cache_memory_bytes
    troupe_metric_events_dropped troupe_config_info troupe_memory_pressure
    """.split()  # noqa: SIM905 - a word list reads better than one quoted line each
)

CACHE = CacheFigures(
    queries=10,
    hits=4,
    hit_tokens=96,
    evictions=1,
    nbytes=2048,
    entries=3,
    breaker_state="half_open",
)
SOURCES = MetricsSources(cache=lambda: CACHE, load=lambda: Load(running=2, waiting=5))


class Tick:
    """A hand-driven monotonic clock for the pure windows."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def completed(duration: float = 1.0, **overrides: object) -> RequestCompleted:
    fields: dict[str, object] = {
        "endpoint": "chat",
        "status": 200,
        "model": "tiny",
        "duration_s": duration,
        "ttft_s": 0.05,
        "inter_token_s": [0.01, 0.02],
        "queue_s": 0.001,
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "finish_reason": "stop",
    }
    fields.update(overrides)
    return RequestCompleted(**fields)  # type: ignore[arg-type]  # reason: test overrides


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


# --- windows -------------------------------------------------------------------------------


def test_percentiles_use_the_nearest_rank() -> None:
    window = SlidingWindow(Tick(), size=200)
    window.extend([float(v) for v in range(100, 0, -1)])
    assert window.percentiles(50, 95, 99) == [50.0, 95.0, 99.0]
    assert percentile([3.0], 99) == 3.0
    assert SlidingWindow(Tick()).percentiles(50, 99) == [None, None]


def test_a_window_forgets_by_size_and_by_age() -> None:
    tick = Tick()
    window = SlidingWindow(tick, size=3, max_age=10.0)
    window.extend([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert window.values() == [2.0, 3.0, 4.0]
    tick.now = 5.0
    window.add(5.0)
    tick.now = 10.5  # the first three are now older than ten seconds
    assert window.values() == [5.0]


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=50),
    steps=st.lists(
        st.tuples(st.floats(0, 20), st.floats(-1e6, 1e6, allow_nan=False)), max_size=200
    ),
)
def test_window_percentiles_stay_within_its_values(
    size: int, steps: list[tuple[float, float]]
) -> None:
    tick = Tick()
    window = SlidingWindow(tick, size=size, max_age=30.0)
    for dt, value in steps:
        tick.now += dt
        window.add(value)
        assert len(window) <= size
        values = window.values()
        p50, p95, p99 = window.percentiles(50, 95, 99)
        if not values:
            assert p50 is p95 is p99 is None
            continue
        assert p50 is not None and p95 is not None and p99 is not None
        assert min(values) <= p50 <= p95 <= p99 <= max(values)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 50), st.floats(0, 1e4)), max_size=200))
def test_a_rolling_rate_keeps_a_bounded_number_of_buckets(
    steps: list[tuple[float, float]],
) -> None:
    tick = Tick()
    rate = RollingRate(tick, window=300.0, resolution=1.0)
    for dt, amount in steps:
        tick.now += dt
        rate.add(amount)
        assert rate.buckets <= 301
        assert rate.rate() >= 0.0


def test_a_rolling_rate_averages_over_five_minutes() -> None:
    tick = Tick()
    rate = RollingRate(tick)
    assert rate.rate() == 0.0
    tick.now = 300.0
    for _ in range(30):
        rate.add()
    assert rate.rate() == pytest.approx(30 / 300)
    tick.now = 601.0
    assert rate.rate() == 0.0
    assert rate.total == 30


def test_inter_token_samples_are_capped_and_spread() -> None:
    gaps = [float(i) for i in range(1000)]
    kept = cap_samples(gaps)
    assert len(kept) == 64
    assert kept[0] == 0.0 and kept[-1] > 900.0
    assert cap_samples([1.0, 2.0]) == [1.0, 2.0]


# --- state, registry, snapshots --------------------------------------------------------------


def test_a_zero_traffic_snapshot_reads_zero_rates_and_no_percentiles() -> None:
    state = MetricsState(ManualClock())
    state.refresh(MetricsSources(memory=lambda previous: MemoryFigures()))
    snapshot = state.snapshot([])
    assert snapshot.cache is not None and snapshot.cache.hit_rate == 0.0
    assert (snapshot.cache.state, snapshot.cache.misses) == (None, 0)
    assert snapshot.latency is not None
    ttft = snapshot.latency.time_to_first_token
    assert ttft.count == 0 and ttft.p99_ms is None
    assert snapshot.throughput is not None and snapshot.throughput.requests_per_second == 0.0
    assert snapshot.throughput.total_requests == 0
    assert snapshot.memory is not None and snapshot.memory.current_mb is None
    assert snapshot.memory.growth_mb is None and snapshot.memory.mlx_active_mb is None
    assert snapshot.requests is not None and snapshot.requests.running is None
    assert snapshot.actors is not None and snapshot.actors.restarts == {}


def test_snapshot_categories_filter_what_is_returned() -> None:
    state = MetricsState(ManualClock())
    state.refresh(SOURCES)
    cache_only = state.snapshot(["cache", "bogus"])
    assert cache_only.cache is not None and cache_only.cache.hit_rate == pytest.approx(0.4)
    assert (cache_only.cache.state, cache_only.cache.misses) == ("half_open", 6)
    assert cache_only.latency is None and cache_only.memory is None
    assert cache_only.throughput is None
    assert cache_only.unknown_categories == ["bogus"]
    memory = state.snapshot(["memory"]).memory
    assert memory is not None and memory.current_mb is not None and memory.current_mb > 0
    assert memory.peak_mb is not None and memory.peak_mb >= memory.current_mb


def test_memory_growth_is_measured_from_the_first_start() -> None:
    readings = iter([100 * MIB, 150 * MIB])

    def memory(previous: MemoryFigures | None) -> MemoryFigures:
        rss = next(readings)
        return MemoryFigures(
            rss=rss, peak_rss=max(rss, previous.peak_rss or 0) if previous else rss
        )

    clock = ManualClock()
    state = MetricsState(clock)
    sources = MetricsSources(memory=memory)
    state.mark_start(sources)
    state.mark_start(sources)  # a later incarnation keeps the baseline: no second read
    clock.advance(12.5)
    state.refresh(sources)
    snapshot = state.snapshot(["memory"])
    assert snapshot.uptime_seconds == 12.5
    assert snapshot.memory is not None
    assert (snapshot.memory.initial_mb, snapshot.memory.current_mb) == (100.0, 150.0)
    assert (snapshot.memory.growth_mb, snapshot.memory.peak_mb) == (50.0, 150.0)
    assert snapshot.memory.mlx_peak_mb is None


def test_snapshot_latency_and_throughput_follow_the_events() -> None:
    clock = ManualClock()
    state = MetricsState(clock)
    clock.advance(300.0)  # older than the rate window: rates divide by five minutes
    for i in range(1, 101):
        state.observe(completed(float(i)))
    snapshot = state.snapshot(["latency", "throughput"])
    assert snapshot.latency is not None and snapshot.throughput is not None
    end_to_end = snapshot.latency.end_to_end
    assert (end_to_end.count, end_to_end.p50_ms, end_to_end.p95_ms, end_to_end.p99_ms) == (
        100,
        50_000.0,
        95_000.0,
        99_000.0,
    )
    assert snapshot.latency.inter_token_latency.count == 200
    assert snapshot.latency.time_to_first_token.p50_ms == pytest.approx(50.0)
    assert snapshot.throughput.requests_per_second == pytest.approx(100 / 300)
    assert snapshot.throughput.tokens_per_second == pytest.approx(400 / 300)
    assert (snapshot.throughput.total_requests, snapshot.throughput.total_tokens) == (100, 400)
    clock.advance(301.0)
    later = state.snapshot(["latency", "throughput"])
    assert later.latency is not None and later.latency.end_to_end.p50_ms is None
    assert later.throughput is not None and later.throughput.requests_per_second == 0.0
    assert later.throughput.total_requests == 100  # a lifetime total, not windowed


def test_a_refused_request_is_counted_but_kept_out_of_the_latencies() -> None:
    state = MetricsState(ManualClock())
    state.observe(completed(2.0))
    state.observe(completed(0.001, status=429, ttft_s=None, inter_token_s=[], admitted=False))
    snapshot = state.snapshot(["latency", "throughput", "requests"])
    assert snapshot.latency is not None and snapshot.latency.end_to_end.count == 1
    assert snapshot.latency.end_to_end.p50_ms == 2000.0
    assert snapshot.throughput is not None and snapshot.throughput.total_requests == 2
    assert snapshot.requests is not None and snapshot.requests.errors == 1
    parsed = families(state.registry.render())
    assert ({"endpoint": "chat", "status": "429", "model": "tiny"}, 1.0) in parsed[
        "troupe_requests"
    ]
    assert ({}, 1.0) in parsed["troupe_request_duration_seconds"]  # the _count: one


def test_the_engine_reports_how_long_a_request_queued(loaded_model: LoadedModel) -> None:
    sent = Generate(request_id="q", prompt=[300, 301, 302], submitted_at=time.time() - 2.0)
    admitted = admit(sent, loaded_model, None)
    assert isinstance(admitted, Admission)
    finished = admitted.request.finish(FinishReason.CANCELLED)
    assert finished.queued_s is not None and 2.0 <= finished.queued_s < 60.0
    unsent = admit(Generate(request_id="u", prompt=[300, 301]), loaded_model, None)
    assert isinstance(unsent, Admission)
    assert unsent.request.finish(FinishReason.CANCELLED).queued_s is None


def test_the_prometheus_text_parses_and_holds_every_family() -> None:
    state = MetricsState(ManualClock(), config={"model": "tiny", "api_key": "sk-x", "Secret": "s"})
    state.observe(completed(0.5))
    state.observe(completed(2.0, status=500, ttft_s=None))
    state.observe(RequestShed(reason="queue_full"))
    state.observe(RequestCancelled(reason="disconnect"))
    state.refresh(SOURCES)
    parsed = families(state.registry.render())
    missing = FAMILIES - parsed.keys()
    assert not missing, missing
    assert ({"endpoint": "chat", "status": "500", "model": "tiny"}, 1.0) in parsed[
        "troupe_requests"
    ]
    assert parsed["troupe_cache_breaker_state"] == [({}, 1.0)]
    assert parsed["troupe_requests_waiting"] == [({}, 5.0)]
    assert parsed["troupe_generation_tokens"] == [({}, 8.0)]
    assert parsed["troupe_config_info"] == [({"model": "tiny"}, 1.0)]
    assert ({"reason": "queue_full"}, 1.0) in parsed["troupe_requests_shed"]


def test_failing_sources_leave_figures_unset() -> None:
    def broken() -> CacheFigures:
        raise RuntimeError("cache gone")

    def no_memory(previous: MemoryFigures | None) -> MemoryFigures:
        raise OSError("no /proc")

    state = MetricsState(ManualClock())
    state.refresh(MetricsSources(cache=broken, memory=no_memory))
    parsed = families(state.registry.render())
    assert parsed["troupe_process_resident_memory_bytes"] == []
    assert parsed["troupe_cache_breaker_state"] == []
    assert parsed["troupe_cache_queries"] == [({}, 0.0)]


def test_unreadable_memory_reads_null_in_the_json_and_nothing_else_is_missing() -> None:
    def no_memory(previous: MemoryFigures | None) -> MemoryFigures:
        raise OSError("no psutil, no MLX")

    state = MetricsState(ManualClock())
    sources = MetricsSources(memory=no_memory, cache=lambda: CACHE)
    state.mark_start(sources)
    state.refresh(sources)
    body = snapshot_json(state.snapshot([]))
    assert set(body) == {"timestamp", "uptime_seconds", *CATEGORIES}
    assert set(body["memory"]) == set(MemorySnapshot.__struct_fields__)
    assert all(value is None for value in body["memory"].values())
    assert body["cache"]["hits"] == 4 and body["latency"]["end_to_end"]["count"] == 0
    assert set(snapshot_json(state.snapshot(["cache"]))) == {"timestamp", "uptime_seconds", "cache"}


def test_the_config_info_leaves_out_secrets_and_fixes_label_names() -> None:
    labels = safe_config({"model.path": "/m", "API_KEY": "x", "client_secret": "y", "9x": "z"})
    assert labels == {"model_path": "/m", "k_9x": "z"}


def test_free_form_labels_are_capped() -> None:
    state = MetricsState(ManualClock())
    for i in range(100):
        state.observe(RequestShed(reason=f"r{i}"))
    assert len(state.totals.shed) == 33
    assert state.totals.shed["other"] == 68


@pytest.mark.parametrize(
    "message",
    [
        completed(),
        RequestShed(reason="pressure"),
        RequestCancelled(reason="deadline"),
        GetMetricsSnapshot(categories=["cache"]),
        RenderPrometheus(),
        PrometheusText(text="# x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_metrics_messages_round_trip(message: Message) -> None:
    assert decode(encode(message), type(message)) == message


def test_a_full_snapshot_round_trips() -> None:
    state = MetricsState(ManualClock())
    state.observe(completed())
    state.refresh(SOURCES)
    snapshot = state.snapshot([])
    assert decode(encode(snapshot), MetricsSnapshot) == snapshot


# --- the actor in a system -------------------------------------------------------------------


class Boom(Message, frozen=True, kw_only=True):
    """Make the probe crash."""


class Probe(Actor):
    async def handle(self, message: Message) -> Message | None:
        raise RuntimeError("probe crashed on purpose")


def system_with(
    state: MetricsState, *, capacity: int = 8192, sources: MetricsSources = SOURCES
) -> ActorSystem:
    holder: list[ActorSystem] = []

    def subscribe() -> Subscription[Event]:
        # The system does not exist yet when the spec is built; it will when this runs.
        return holder[0].subscribe()

    tree = SupervisorSpec(
        "root",
        [
            metrics_child(state, subscribe, sources=sources, capacity=capacity),
            ChildSpec("probe", Probe),
        ],
        backoff=NO_BACKOFF,
    )
    system = ActorSystem(tree, clock=state.clock)
    holder.append(system)
    return system


@pytest.mark.anyio
async def test_the_actor_answers_snapshots_and_renders() -> None:
    state = MetricsState(ManualClock())
    async with system_with(state) as system:
        metrics = system.ref("metrics")
        for i in range(1, 11):
            assert record(metrics, completed(float(i)))
        snapshot = await metrics.ask(
            GetMetricsSnapshot(categories=["latency", "cache"]), timeout=5.0, expect=MetricsSnapshot
        )
        assert snapshot.latency is not None and snapshot.latency.end_to_end.p50_ms == 5000.0
        assert snapshot.cache is not None and snapshot.cache.hits == 4
        assert snapshot.requests is None
        text = await metrics.ask(RenderPrometheus(), timeout=5.0, expect=PrometheusText)
        assert not FAMILIES - families(text.text).keys()


@pytest.mark.anyio
async def test_a_full_mailbox_drops_and_counts_instead_of_blocking() -> None:
    state = MetricsState(ManualClock())
    async with system_with(state, capacity=2) as system:
        metrics = system.ref("metrics")
        # No await in between: the actor cannot make room, and record never waits.
        accepted = sum(record(metrics, completed()) for _ in range(10))
        assert 2 <= accepted <= 3  # the mailbox, plus one handed straight to a waiting actor
        assert system.services.dead_letters.undelivered("metrics") == 10 - accepted
        await anyio.wait_all_tasks_blocked()  # the actor has emptied its mailbox
        snapshot = await metrics.ask(GetMetricsSnapshot(), timeout=5.0, expect=MetricsSnapshot)
        assert snapshot.requests is not None
        assert snapshot.requests.completed == accepted
        assert snapshot.requests.dropped_events == 10 - accepted
    assert not record(metrics, completed())  # stopped: counted too
    assert system.services.dead_letters.undelivered("metrics") == 11 - accepted


@pytest.mark.anyio
async def test_lifecycle_events_update_restart_counters() -> None:
    state = MetricsState(ManualClock())
    async with system_with(state) as system:
        for _ in range(2):
            # An ask returns once the crash has happened; then wait for the restart.
            with pytest.raises(ActorDied):
                await system.ref("probe").ask(Boom(), timeout=5.0)
            await system.wait_idle()
        snapshot = await system.ref("metrics").ask(
            GetMetricsSnapshot(categories=["actors"]), timeout=5.0, expect=MetricsSnapshot
        )
        assert snapshot.actors is not None
        assert snapshot.actors.restarts == {"root/probe": 2}
        assert snapshot.actors.states["root/probe"] == "running"
        text = await system.ref("metrics").ask(
            RenderPrometheus(), timeout=5.0, expect=PrometheusText
        )
    parsed = families(text.text)
    assert ({"actor": "root/probe"}, 2.0) in parsed["troupe_actor_restarts"]
    assert ({"actor": "root/probe", "state": "running"}, 1.0) in parsed["troupe_actor_state"]
