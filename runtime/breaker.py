"""A thread-safe circuit breaker: stop using a failing dependency, then probe it back.

States and transitions:

* ``closed``: every call is allowed. ``failure_threshold`` consecutive faults
  open the breaker.
* ``open``: every call is refused (the caller degrades, e.g. serves a request
  without its cache). Once ``cooldown`` seconds have passed it turns half-open.
* ``half_open``: one call at a time is allowed as a probe; callers arriving
  while the probe is out are refused. ``success_threshold`` consecutive
  successful probes close the breaker (and reset the cool-down to its base); a
  faulty probe reopens it with the cool-down multiplied by ``cooldown_factor``
  up to ``max_cooldown``. A probe not reported within ``probe_timeout`` seconds
  counts as a fault, so a lost report can never leave the breaker stuck.

Time comes from a :class:`~runtime.clock.Clock`, read on demand: there are no
timers, so time-based transitions happen (at their due time) the next time the
breaker is asked anything. Outcomes may be reported from any thread.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from runtime.errors import describe_failure

log = logging.getLogger("troupe.runtime.breaker")


class BreakerState(enum.StrEnum):
    """Where a circuit breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds and times of a :class:`CircuitBreaker`, with their defaults.

    The defaults suit an in-process cache in front of a model: five faults in a
    row are not bad luck, half a minute is long enough for a transient problem
    (memory pressure, a bad entry) to pass, and ten clean probes in a row are
    enough evidence to trust it again.
    """

    enabled: bool = True
    """``False`` switches degradation off: the breaker counts faults but never opens."""
    failure_threshold: int = 5
    """Consecutive faults that open a closed breaker."""
    cooldown: float = 30.0
    """Seconds an open breaker waits before its first probe."""
    cooldown_factor: float = 2.0
    """Multiplier of the cool-down each time a half-open breaker reopens."""
    max_cooldown: float = 300.0
    """Longest cool-down, seconds."""
    success_threshold: int = 10
    """Consecutive successful probes that close a half-open breaker."""
    probe_timeout: float = 10.0
    """Seconds after which an unreported probe counts as a fault."""
    history: int = 64
    """Transitions kept for :meth:`CircuitBreaker.transitions`."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds must be at least 1")
        if self.cooldown < 0 or self.probe_timeout <= 0:
            raise ValueError("breaker cool-down must not be negative, probe timeout positive")
        if self.cooldown_factor < 1 or self.max_cooldown < self.cooldown:
            raise ValueError("breaker cool-down must not shrink or exceed its cap")
        if self.history < 1:
            raise ValueError("breaker history must keep at least one transition")


@dataclass(frozen=True)
class Transition:
    """A change of state: from ``source`` to ``target`` at monotonic time ``at``."""

    source: BreakerState
    target: BreakerState
    at: float
    reason: str
    """A fixed phrase (never user data): why the breaker moved."""


@dataclass(frozen=True)
class BreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker`."""

    state: BreakerState
    enabled: bool
    consecutive_faults: int
    consecutive_successes: int
    total_faults: int
    transitions: int
    opened_at: float | None
    """Monotonic time the breaker last opened, or ``None`` if it never did."""
    cooldown: float
    """The cool-down that applies to the current (or next) opening, seconds."""


class MonotonicTime(Protocol):
    """What the breaker reads time from (any :class:`~runtime.clock.Clock` will do).

    Only this, and not the clock module, so that the engine process, which
    owns a breaker, never imports anyio.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class _Monotonic:
    def monotonic(self) -> float:
        return time.monotonic()


class CircuitBreaker:
    """A circuit breaker safe to use from several threads at once."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: MonotonicTime | None = None,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock: MonotonicTime = clock or _Monotonic()
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_faults = 0
        self._consecutive_successes = 0
        self._total_faults = 0
        self._transitions = 0
        self._history: deque[Transition] = deque(maxlen=self.config.history)
        self._opened_at: float | None = None
        self._cooldown = self.config.cooldown
        self._probe_since: float | None = None
        self._unannounced: list[Transition] = []

    @property
    def state(self) -> BreakerState:
        """The current state, with any due time-based transition applied."""
        with self._lock:
            self._refresh()
            state = self._state
        self._announce()
        return state

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open, a ``True`` claims the probe slot."""
        with self._lock:
            self._refresh()
            if self._state is BreakerState.CLOSED:
                allowed = True
            elif self._state is BreakerState.OPEN or self._probe_since is not None:
                allowed = False
            else:
                self._probe_since = self._clock.monotonic()
                allowed = True
        self._announce()
        return allowed

    def record_success(self) -> None:
        """Report a call that succeeded.

        While open, or half-open with no probe out (a late report from a call
        allowed before the breaker opened, or a probe that already timed out),
        the report is ignored: only a claimed probe can vouch for recovery.
        """
        with self._lock:
            self._refresh()
            if self._state is BreakerState.CLOSED:
                self._consecutive_faults = 0
                self._consecutive_successes += 1
            elif self._state is BreakerState.HALF_OPEN and self._probe_since is not None:
                self._probe_since = None
                self._consecutive_successes += 1
                if self._consecutive_successes >= self.config.success_threshold:
                    self._cooldown = self.config.cooldown
                    self._move(BreakerState.CLOSED, self._clock.monotonic(), "probes succeeded")
        self._announce()

    def record_fault(self) -> None:
        """Report a call that failed."""
        with self._lock:
            self._refresh()
            self._total_faults += 1
            self._consecutive_successes = 0
            if self._state is BreakerState.CLOSED:
                self._consecutive_faults += 1
                if self.config.enabled and (
                    self._consecutive_faults >= self.config.failure_threshold
                ):
                    self._open(self._clock.monotonic(), "consecutive faults")
            elif self._state is BreakerState.HALF_OPEN:
                self._consecutive_faults += 1
                self._reopen(self._clock.monotonic(), "probe failed")
        self._announce()

    def reset(self) -> None:
        """Close the breaker at once and forget the fault streak (an operator's override)."""
        with self._lock:
            self._consecutive_faults = 0
            self._consecutive_successes = 0
            self._probe_since = None
            self._cooldown = self.config.cooldown
            if self._state is not BreakerState.CLOSED:
                self._move(BreakerState.CLOSED, self._clock.monotonic(), "reset")
        self._announce()

    def statistics(self) -> BreakerStatistics:
        """A consistent snapshot of the counters."""
        with self._lock:
            self._refresh()
            stats = BreakerStatistics(
                state=self._state,
                enabled=self.config.enabled,
                consecutive_faults=self._consecutive_faults,
                consecutive_successes=self._consecutive_successes,
                total_faults=self._total_faults,
                transitions=self._transitions,
                opened_at=self._opened_at,
                cooldown=self._cooldown,
            )
        self._announce()
        return stats

    def transitions(self, since: int = 0) -> list[Transition]:
        """The transitions numbered ``since`` and later (the first is 0) still kept.

        A reader that remembers ``statistics().transitions`` can pass it back
        to get only what happened after, e.g. to publish each transition once.
        """
        with self._lock:
            self._refresh()
            first_kept = self._transitions - len(self._history)
            found = list(self._history)[max(0, since - first_kept) :]
        self._announce()
        return found

    # -- internals (called with the lock held) ----------------------------------

    def _refresh(self) -> None:
        """Apply the time-based transitions that are due, each at its due time."""
        now = self._clock.monotonic()
        while True:
            if self._state is BreakerState.OPEN:
                assert self._opened_at is not None
                due = self._opened_at + self._cooldown
                if now < due:
                    return
                self._consecutive_successes = 0
                self._probe_since = None
                self._move(BreakerState.HALF_OPEN, due, "cool-down elapsed")
            elif self._state is BreakerState.HALF_OPEN and self._probe_since is not None:
                due = self._probe_since + self.config.probe_timeout
                if now < due:
                    return
                self._total_faults += 1
                self._consecutive_faults += 1
                self._reopen(due, "probe timed out")
            else:
                return

    def _open(self, at: float, reason: str) -> None:
        self._opened_at = at
        self._probe_since = None
        self._move(BreakerState.OPEN, at, reason)

    def _reopen(self, at: float, reason: str) -> None:
        self._cooldown = min(self.config.max_cooldown, self._cooldown * self.config.cooldown_factor)
        self._open(at, reason)

    def _move(self, target: BreakerState, at: float, reason: str) -> None:
        transition = Transition(self._state, target, at, reason)
        self._state = target
        self._transitions += 1
        self._history.append(transition)
        if target is BreakerState.CLOSED:
            self._consecutive_faults = 0
        log.log(
            logging.WARNING if target is BreakerState.OPEN else logging.INFO,
            "circuit breaker %s -> %s (%s)",
            transition.source.value,
            target.value,
            reason,
        )
        if self._on_transition is not None:
            self._unannounced.append(transition)

    def _announce(self) -> None:
        """Call the transition callback outside the lock, so it may use the breaker."""
        if self._on_transition is None or not self._unannounced:
            return
        with self._lock:
            pending, self._unannounced = self._unannounced, []
        for transition in pending:
            try:
                self._on_transition(transition)
            except Exception as exc:
                # A broken observer must not break the callers the breaker protects.
                log.warning("circuit breaker observer failed: %s", describe_failure(exc))
