"""Engine faults for drills and tests, and how long the engine takes to recover.

Both objects are built once by the composition root and shared by every
incarnation of the generation actor, so they outlive engine restarts:

* :class:`FaultPlan` holds armed faults. A fault armed to fire ``times``
  times keeps firing across restarts (each restarted engine counts its own
  ``after_tokens`` again), which is how a drill makes the engine crash ten
  times, or loop until the supervisor gives up.
* :class:`RecoveryTimer` measures each crash-to-next-token interval: the
  downtime a client of a crashing engine actually sees.

This module never imports anyio: its methods are called on the engine thread
and read from the event loop, under a lock.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from actors.generation.protocol import EngineFault

log = logging.getLogger("troupe.engine")

RECOVERY_SAMPLES = 256
"""Recovery times kept (the most recent ones)."""


@dataclass
class _Armed:
    kind: EngineFault
    after_tokens: int
    remaining: int
    """Firings left."""
    countdown: int
    """Tokens left before the next firing."""
    request_id: str = ""
    """For a poison fault: the request it targets."""


class FaultPlan:
    """Faults the engine raises after a number of generated tokens."""

    def __init__(self, on_fire: Callable[[EngineFault], None] | None = None) -> None:
        """Faults to fire; ``on_fire`` hears of each firing before it takes effect.

        The engine process reports firings to its parent, whose plan outlives it.
        """
        self._on_fire = on_fire
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self.fired = 0
        """Faults raised so far, all kinds."""

    def arm(
        self, kind: EngineFault, after_tokens: int, times: int = 1, request_id: str = ""
    ) -> None:
        """Fire ``kind`` ``times`` times, each after ``after_tokens`` more tokens.

        A ``POISON`` fault fires instead whenever its request is in the batch,
        and ``EXIT_ON_LOAD`` when an engine process loads the model.
        """
        if after_tokens < 1 or times < 1:
            raise ValueError("a fault needs after_tokens >= 1 and times >= 1")
        with self._lock:
            self._armed.append(_Armed(kind, after_tokens, times, after_tokens, request_id))

    def armed(self) -> list[tuple[EngineFault, int, int, str]]:
        """Each armed fault as (kind, after_tokens, firings left, request id), to hand on."""
        with self._lock:
            return [(f.kind, f.after_tokens, f.remaining, f.request_id) for f in self._armed]

    def consume(self, kind: EngineFault) -> bool:
        """Count one firing of ``kind`` that happened elsewhere (the engine process)."""
        with self._lock:
            due = next((fault for fault in self._armed if fault.kind == kind), None)
            if due is None:
                return False
            due.remaining -= 1
            if due.remaining == 0:
                self._armed.remove(due)
            self.fired += 1
            return True

    def poisons(self, request_ids: Iterable[str]) -> bool:
        """Whether a poison fault targets one of ``request_ids`` (fires it if so)."""
        if not self._armed:
            return False
        with self._lock:
            targets = [f for f in self._armed if f.kind == EngineFault.POISON]
            due = next(
                (f for f in targets if any(_targets(f.request_id, r) for r in request_ids)), None
            )
            if due is None:
                return False
            due.remaining -= 1
            if due.remaining == 0:
                self._armed.remove(due)
            self.fired += 1
        if self._on_fire is not None:
            self._on_fire(EngineFault.POISON)
        return True

    def clear(self) -> int:
        """Disarm everything; return how many firings were still pending."""
        with self._lock:
            pending = sum(fault.remaining for fault in self._armed)
            self._armed.clear()
            return pending

    def pending(self) -> int:
        """Firings still to come."""
        with self._lock:
            return sum(fault.remaining for fault in self._armed)

    def on_token(self) -> EngineFault | None:
        """Count one generated token; the fault due now, if any (engine thread)."""
        if not self._armed:  # the common case, read without the lock
            return None
        with self._lock:
            counting = [fault for fault in self._armed if fault.kind in _BY_TOKENS]
            for fault in counting:
                fault.countdown -= 1
            due = next((fault for fault in counting if fault.countdown <= 0), None)
            if due is None:
                return None
            due.remaining -= 1
            due.countdown = due.after_tokens
            if due.remaining == 0:
                self._armed.remove(due)
            self.fired += 1
        if self._on_fire is not None:
            self._on_fire(due.kind)
        return due.kind

    def reset_countdowns(self) -> None:
        """A new engine starts counting afresh (the old one's tokens died with it)."""
        with self._lock:
            for fault in self._armed:
                fault.countdown = fault.after_tokens


_BY_TOKENS = frozenset({EngineFault.CRASH, EngineFault.OOM, EngineFault.KILL, EngineFault.HANG})
"""Faults that fire after a number of generated tokens."""


def _targets(target: str, request_id: str) -> bool:
    """Whether the engine's ``request_id`` is ``target``'s (the server adds a suffix)."""
    return request_id == target or request_id.startswith((f"{target}.", f"{target}~"))


class RecoveryTimer:
    """Crash-to-next-token intervals of the engine, most recent last."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._crashed_at: float | None = None
        self._samples: deque[float] = deque(maxlen=RECOVERY_SAMPLES)

    def crashed(self) -> None:
        """The engine died (the first crash of a burst starts the interval)."""
        with self._lock:
            if self._crashed_at is None:
                self._crashed_at = self._clock()

    def token_served(self) -> None:
        """A step produced tokens: ends the interval if one is open (engine thread)."""
        if self._crashed_at is None:  # the common case, read without the lock
            return
        with self._lock:
            if self._crashed_at is not None:
                self._samples.append(self._clock() - self._crashed_at)
                self._crashed_at = None

    def samples(self) -> list[float]:
        """The recorded intervals in seconds, oldest first."""
        with self._lock:
            return list(self._samples)


class InjectedEngineFault(RuntimeError):
    """Raised inside the engine by fault injection (tests, the fault switch)."""


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is MLX (or Python) failing to allocate memory."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("malloc", "allocat", "out of memory")
    )


def die_natively() -> None:
    """Fault injection: end this process the way a native crash does (no cleanup)."""
    log.warning("engine: injected fault kills the engine process")
    logging.shutdown()  # the warning reaches the parent before the process ends
    os.kill(os.getpid(), signal.SIGKILL)


def fire_token_faults(plan: FaultPlan) -> None:
    """Fire the fault due at this generated token, if any (on the engine thread)."""
    match plan.on_token():
        case EngineFault.OOM:
            raise MemoryError("injected allocation failure")
        case EngineFault.CRASH:
            raise InjectedEngineFault("injected engine fault")
        case EngineFault.KILL:
            die_natively()
        case EngineFault.HANG:
            log.warning("engine: injected hang; this thread stops stepping")
            threading.Event().wait()  # never set: what a native deadlock looks like
