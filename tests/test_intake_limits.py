"""Intake's limits: the prompt estimate, token buckets and the drain rate, alone."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.intake.limits import (
    ClientBuckets,
    DrainRate,
    TokenBucket,
    backlog_retry_after,
    ceil_seconds,
    estimate_prompt_tokens,
)

pytestmark = pytest.mark.timeout(60)


# -- limits ------------------------------------------------------------------------------


def test_prompt_estimate_formula() -> None:
    assert estimate_prompt_tokens(0) == 8
    assert estimate_prompt_tokens(1) == 9
    assert estimate_prompt_tokens(101, messages=3) == 51 + 24
    assert estimate_prompt_tokens(-5, messages=0) == 8


def test_backlog_retry_after() -> None:
    assert backlog_retry_after(10, None) == 1
    assert backlog_retry_after(10, None, default=5) == 5
    assert backlog_retry_after(0, 3.0) == 1
    assert backlog_retry_after(10, 4.0) == 3
    assert backlog_retry_after(10, 0.0) == 60  # 10 / 0.1 = 100, clamped
    assert backlog_retry_after(10, 0.0, floor=1.0) == 10
    assert ceil_seconds(float("nan")) == 1 and ceil_seconds(float("inf")) > 60


def test_a_token_bucket_refills_with_the_clock() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.tokens(100.0) == 3.0  # never more than the burst
    assert bucket.tokens(50.0) == 3.0  # time going backwards adds nothing
    off = ClientBuckets(rate=0.0, burst=1, max_clients=1)  # a rate of 0: no limit
    assert all(off.take("c", now=0.0) == 0.0 for _ in range(100)) and len(off) == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.001, max_value=1_000.0),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(
        st.tuples(st.floats(min_value=-1.0, max_value=100.0), st.booleans()), max_size=80
    ),
)
def test_a_bucket_never_exceeds_its_burst_nor_goes_negative(
    rate: float, burst: int, steps: list[tuple[float, bool]]
) -> None:
    now = 0.0
    bucket = TokenBucket(rate, burst, now)
    for delta, take in steps:
        now += delta
        before = bucket.tokens(now)
        if take:
            wait = bucket.take(now)
            assert (wait == 0.0) == (before >= 1.0)
            assert wait >= 0.0 and (wait == 0.0 or wait <= 1.0 / rate + 1e-9)
        assert 0.0 <= bucket.tokens(now) <= burst


@settings(max_examples=100, deadline=None)
@given(
    clients=st.lists(st.integers(min_value=0, max_value=30), max_size=100),
    cap=st.integers(min_value=1, max_value=8),
)
def test_the_bucket_map_never_outgrows_its_cap(clients: list[int], cap: int) -> None:
    buckets = ClientBuckets(rate=1.0, burst=2, max_clients=cap)
    for n, client in enumerate(clients):
        buckets.take(f"client-{client}", now=n * 0.1)
        assert len(buckets) <= cap
        assert f"client-{client}" in buckets  # the one just used is never the one evicted


def test_the_drain_rate_counts_busy_time_only() -> None:
    drain = DrainRate(time_constant=10.0)
    assert drain.rate(0.0) is None
    drain.busy(0.0)
    drain.observe(2.0)
    drain.idle(2.0)
    busy = drain.rate(2.0)
    assert busy == pytest.approx(1 / (10 * (1 - math.exp(-0.2))))  # about 1 per 2 s
    assert drain.rate(1_000.0) == pytest.approx(busy)  # idle time changes nothing
    drain.busy(1_000.0)
    assert drain.busy_time(1_001.0) == pytest.approx(3.0)


@settings(max_examples=50, deadline=None)
@given(rate=st.floats(min_value=0.2, max_value=50.0))
def test_the_drain_rate_converges_to_a_steady_rate(rate: float) -> None:
    drain = DrainRate(time_constant=10.0)
    drain.busy(0.0)
    now = 0.0
    while now < 60.0:
        now += 1.0 / rate
        drain.observe(now)
        measured = drain.rate(now)
        assert measured is not None and measured >= 0
    # Discrete releases bias the sum up by about half a release: 0.5 / time_constant.
    assert drain.rate(now) == pytest.approx(rate, rel=0.05, abs=0.1)
