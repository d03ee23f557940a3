"""Memory pressure: watch the process's memory and shed prefix-cache entries.

Usage is the larger of two views of the process: its resident set (psutil)
and what MLX holds (``mx.get_active_memory() + mx.get_cache_memory()``). On
Linux MLX's buffers are part of the resident set; on Apple silicon GPU memory
may not be, so neither view alone is safe. A view that cannot be read is
``None``; with neither, a check does nothing.

Two marks give hysteresis. Above the high-water mark a check evicts least
recently used entries until usage should reach the low-water mark (or the
cache is empty), then returns MLX's freed buffers to the system with
``mx.clear_cache()``, and raises the pressure flag. The flag stays up until a
later check starts below the low-water mark, so others (admission control)
see it for at least one check interval.

The readings and the cache-clearing call are injectable, so tests drive
pressure deterministically.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import psutil

from actors.kvcache.store import PrefixCache
from actors.memory import MemoryFigures, read_memory

log = logging.getLogger("troupe.kvcache.pressure")


@dataclass(frozen=True)
class PressureConfig:
    """High- and low-water marks in bytes (``low_water < high_water``)."""

    high_water: int
    low_water: int

    def __post_init__(self) -> None:
        if not 0 <= self.low_water < self.high_water:
            raise ValueError("memory marks need 0 <= low_water < high_water")

    @classmethod
    def for_machine(cls, high: float = 0.85, low: float = 0.75) -> PressureConfig:
        """Marks as fractions of physical memory (defaults: 85 % and 75 %)."""
        total = int(psutil.virtual_memory().total)
        return cls(high_water=int(total * high), low_water=int(total * low))


@dataclass(frozen=True)
class PressureOutcome:
    """What one check saw and did."""

    reading: MemoryFigures
    under_pressure: bool
    relieved: bool
    """Whether this check evicted and cleared MLX's cache."""
    evicted_entries: int
    evicted_bytes: int
    after: MemoryFigures | None
    """The reading after relief, or ``None`` when there was none."""


@dataclass(frozen=True)
class PressureStatistics:
    """Counters of a :class:`MemoryMonitor`."""

    under_pressure: bool
    checks: int
    reliefs: int
    last_usage: int | None


class MemoryMonitor:
    """Checks memory on demand and relieves pressure through the prefix cache."""

    def __init__(
        self,
        cache: PrefixCache,
        config: PressureConfig,
        *,
        read: Callable[[], MemoryFigures] = read_memory,
        clear_mlx_cache: Callable[[], None] = mx.clear_cache,
    ) -> None:
        self.cache = cache
        self.config = config
        self._read = read
        self._clear_mlx_cache = clear_mlx_cache
        self._lock = threading.Lock()  # checks run in worker threads; stats on the loop
        self._under_pressure = False
        self._checks = 0
        self._reliefs = 0
        self._last_usage: int | None = None
        self._simulated_excess: int | None = None

    @property
    def under_pressure(self) -> bool:
        """Whether the last checks saw pressure that has not yet gone below the low mark."""
        return self._under_pressure

    def simulate(self, excess: int | None) -> None:
        """Drill: read usage ``excess`` bytes above the high-water mark; ``None`` ends it.

        Relief under simulation evicts as a real excess would (to the low-water
        mark, which a fixed reading never reaches, so the cache empties), and
        the flag stays up until a check after the simulation ends reads real
        usage below the low-water mark.
        """
        with self._lock:
            self._simulated_excess = excess

    @property
    def simulating(self) -> bool:
        """Whether a pressure drill is on."""
        return self._simulated_excess is not None

    def _reading(self) -> MemoryFigures:
        excess = self._simulated_excess
        if excess is None:
            return self._read()
        return MemoryFigures(rss=self.config.high_water + excess, mlx_active=None, mlx_cache=None)

    def check(self) -> PressureOutcome:
        """Read memory, relieve pressure if above the high mark, update the flag."""
        with self._lock:
            reading = self._reading()
            usage = reading.usage
            self._checks += 1
            self._last_usage = usage
            if usage is None:
                return PressureOutcome(reading, self._under_pressure, False, 0, 0, None)
            if usage > self.config.high_water:
                return self._relieve(reading, usage)
            if usage < self.config.low_water and self._under_pressure:
                self._under_pressure = False
                log.info("memory pressure over")
            return PressureOutcome(reading, self._under_pressure, False, 0, 0, None)

    def statistics(self) -> PressureStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return PressureStatistics(
                self._under_pressure, self._checks, self._reliefs, self._last_usage
            )

    def _relieve(self, reading: MemoryFigures, usage: int) -> PressureOutcome:
        excess = usage - self.config.low_water
        evicted = self.cache.evict_to_bytes(self.cache.nbytes - excess)
        # Evicted arrays return to MLX's buffer cache, not to the system, until cleared.
        self._clear_mlx_cache()
        after = self._reading()
        if not self._under_pressure:
            log.warning(
                "memory pressure: evicted %d kv-cache entries (%d bytes)",
                evicted.entries,
                evicted.nbytes,
            )
        self._under_pressure = True
        self._reliefs += 1
        self._last_usage = after.usage
        return PressureOutcome(reading, True, True, evicted.entries, evicted.nbytes, after)
