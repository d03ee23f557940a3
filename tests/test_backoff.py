"""The restart backoff schedule stays within its documented bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import Backoff

pytestmark = pytest.mark.timeout(60)

backoffs = st.builds(
    Backoff,
    initial=st.floats(0, 5),
    factor=st.floats(1, 4),
    cap=st.floats(0, 60),
    jitter=st.floats(0, 1),
    reset_after=st.floats(0, 100),
)


@given(backoff=backoffs, consecutive=st.integers(1, 10_000), seed=st.integers())
def test_delay_is_within_jitter_of_nominal_and_never_above_the_cap(
    backoff: Backoff, consecutive: int, seed: int
) -> None:
    nominal = backoff.nominal(consecutive)
    delay = backoff.delay(consecutive, random.Random(seed))
    assert 0.0 <= delay <= nominal <= backoff.cap
    assert delay >= nominal * (1 - backoff.jitter) - 1e-12


@given(backoff=backoffs, consecutive=st.integers(1, 10_000))
def test_nominal_delay_never_shrinks_and_the_first_restart_is_immediate(
    backoff: Backoff, consecutive: int
) -> None:
    assert backoff.nominal(1) == 0.0
    assert backoff.nominal(consecutive) <= backoff.nominal(consecutive + 1)


def test_default_schedule() -> None:
    schedule = [Backoff().nominal(n) for n in range(1, 10)]
    assert schedule == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]


@pytest.mark.parametrize(
    "options",
    [{"initial": -1.0}, {"factor": 0.5}, {"jitter": 1.5}, {"cap": -1.0}, {"reset_after": -1.0}],
)
def test_invalid_backoff_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**options)
