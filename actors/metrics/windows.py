"""Bounded sliding windows for percentiles, and rolling rates; pure Python.

Both are bounded twice: by a fixed number of slots (a ring buffer, so memory
never grows with traffic) and by age, read through an injected clock so tests
drive time by hand. Neither is thread-safe: the metrics actor owns them and
handles one message at a time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

Now = Callable[[], float]
"""A monotonic clock reading in seconds, e.g. ``clock.monotonic``."""


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of an ascending, non-empty list.

    Nearest rank always returns an observed value, so the result is within the
    window's minimum and maximum by construction.

    Args:
        ordered: Values in ascending order.
        q: The percentile, 0 to 100.

    Returns:
        The smallest value with at least ``q`` percent of the values at or below it.
    """
    if not ordered:
        raise ValueError("a percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be between 0 and 100")
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class SlidingWindow:
    """The latest ``size`` observations no older than ``max_age`` seconds."""

    def __init__(self, now: Now, *, size: int = 1024, max_age: float = 300.0) -> None:
        """Create an empty window.

        Args:
            now: Reads the monotonic clock.
            size: Observations kept at most; older ones fall out first.
            max_age: Seconds an observation counts for.
        """
        if size < 1:
            raise ValueError("a window holds at least one observation")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._now = now
        self.size = size
        self.max_age = max_age
        self._items: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Observe ``value`` now; non-finite values are ignored (they break ordering)."""
        if math.isfinite(value):
            self._items.append((self._now(), value))

    def extend(self, values: list[float]) -> None:
        """Observe several values at once."""
        for value in values:
            self.add(value)

    def values(self) -> list[float]:
        """The observations still in the window, oldest first."""
        self._expire()
        return [value for _, value in self._items]

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def percentiles(self, *qs: float) -> list[float | None]:
        """The ``qs``-th percentiles of the window, ``None`` each while it is empty."""
        ordered = sorted(self.values())
        if not ordered:
            return [None for _ in qs]
        return [percentile(ordered, q) for q in qs]

    def _expire(self) -> None:
        horizon = self._now() - self.max_age
        while self._items and self._items[0][0] < horizon:
            self._items.popleft()


class RollingRate:
    """Amounts per second over a rolling window, kept in fixed-width buckets.

    The window is split into buckets of ``resolution`` seconds, so a counter
    holds at most ``window / resolution + 1`` buckets however busy it gets.
    """

    def __init__(self, now: Now, *, window: float = 300.0, resolution: float = 1.0) -> None:
        """Create a counter that has seen nothing.

        Args:
            now: Reads the monotonic clock.
            window: Seconds the rate is averaged over (five minutes by default).
            resolution: Width of one bucket, seconds.
        """
        if window <= 0 or resolution <= 0 or resolution > window:
            raise ValueError("need 0 < resolution <= window")
        self._now = now
        self.window = window
        self.resolution = resolution
        self._created = now()
        self._buckets: deque[tuple[int, float]] = deque()
        self.total = 0.0
        """Everything ever added, for the lifetime totals."""

    def add(self, amount: float = 1.0) -> None:
        """Count ``amount`` now."""
        if amount <= 0 or not math.isfinite(amount):
            return
        self.total += amount
        slot = math.floor(self._now() / self.resolution)
        if self._buckets and self._buckets[-1][0] == slot:
            self._buckets[-1] = (slot, self._buckets[-1][1] + amount)
        else:
            self._buckets.append((slot, amount))
        self._expire()

    @property
    def buckets(self) -> int:
        """Buckets held now (bounded by ``window / resolution + 1``)."""
        self._expire()
        return len(self._buckets)

    def rate(self) -> float:
        """Amount per second over the window.

        A counter younger than the window divides by its age instead (at least
        one bucket), so the rate right after start-up is not underestimated
        five-minutes-fold.
        """
        self._expire()
        amount = sum(value for _, value in self._buckets)
        if amount == 0:
            return 0.0
        span = min(self.window, max(self.resolution, self._now() - self._created))
        return amount / span

    def _expire(self) -> None:
        oldest = math.floor((self._now() - self.window) / self.resolution) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
