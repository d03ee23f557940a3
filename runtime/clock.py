"""Clocks: the real one, and a manual one that tests advance by hand.

The supervisor reads time only through a :class:`Clock`, so restart intensity,
periods and backoff are tested deterministically without real sleeps. Sleeping
is expressed as ``sleep_until(deadline)`` rather than ``sleep(seconds)``: the
deadline is computed when the decision is made, so a test that advances the
clock before the sleeper has started waiting still wakes it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Time as the runtime sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps shown to people."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic()`` has reached ``deadline``."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def wall(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep in the running event loop until ``deadline``."""
        await anyio.sleep(max(0.0, deadline - time.monotonic()))


class ManualClock:
    """A clock that moves only when :meth:`advance` is called.

    Sleepers wake, in deadline order, as soon as the clock reaches their
    deadline. ``wall()`` moves in step from a fixed epoch.
    """

    def __init__(self, start: float = 1000.0, epoch: float = 1_767_225_600.0) -> None:
        self._now = start
        self._epoch_offset = epoch - start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """Return the manual time."""
        return self._now

    def wall(self) -> float:
        """Return the manual time shifted to the epoch given at construction."""
        return self._now + self._epoch_offset

    async def sleep_until(self, deadline: float) -> None:
        """Wait until :meth:`advance` reaches ``deadline`` (at once if it has)."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._order), wake))
        await wake.wait()

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    @property
    def sleepers(self) -> int:
        """How many sleepers are waiting (cancelled ones included until they are due)."""
        return len(self._sleepers)
