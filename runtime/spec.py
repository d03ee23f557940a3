"""Child and supervisor specifications, with OTP's vocabulary and documented defaults.

Defaults, and why:

* ``restart=PERMANENT``: serving actors are meant to run for the life of the
  server, as OTP's default child.
* Worker ``shutdown=5.0`` seconds: OTP's default worker shutdown; enough for an
  actor to finish its current message and release resources. A child that is
  still running when it expires is abandoned (Python cannot kill a task).
* Supervisor ``shutdown=None`` (no limit): as OTP's ``infinity`` for
  supervisors; each of its children is already bounded by its own timeout.
* ``intensity=5`` restarts within ``period=10.0`` seconds: more lenient than
  OTP's 1 in 5 s, because an inference actor restarts in milliseconds while
  keeping its weights, but strict enough that a crash loop escalates within a
  couple of seconds once backoff is counted.
* :class:`Backoff`: the first restart after a healthy run is immediate (OTP
  behaviour); consecutive ones wait 0.1 s, 0.2 s, 0.4 s ... up to 10 s, each
  shortened by up to 20 % jitter so that siblings do not restart in lockstep.
  The count resets once the child has run for 30 s.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.mailbox import MailboxConfig

if TYPE_CHECKING:
    from runtime.actor import Actor


class Restart(enum.StrEnum):
    """When a child that exited is started again (OTP's restart types)."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after an abnormal exit (a crash), not after ``normal`` or ``shutdown``."""
    TEMPORARY = "temporary"
    """Never."""

    def wants_restart(self, crashed: bool) -> bool:
        """Whether a child of this type is restarted after such an exit."""
        if self is Restart.PERMANENT:
            return True
        return crashed and self is Restart.TRANSIENT


class Strategy(enum.StrEnum):
    """Which children are restarted when one of them exits (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped in reverse order, then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and those started after it."""


@dataclass(frozen=True)
class Backoff:
    """Delay before consecutive restarts of the same child."""

    initial: float = 0.1
    """Delay before the second consecutive restart, seconds."""
    factor: float = 2.0
    cap: float = 10.0
    """Longest delay, seconds."""
    jitter: float = 0.2
    """Fraction by which a delay may be shortened at random (0 to 1)."""
    reset_after: float = 30.0
    """Seconds of healthy running after which the consecutive count starts again."""

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0 or self.reset_after < 0:
            raise ValueError("backoff times must not be negative")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def nominal(self, consecutive: int) -> float:
        """The delay before the ``consecutive``-th restart in a row, before jitter."""
        if consecutive <= 1:
            return 0.0
        try:
            grown = self.initial * self.factor ** (consecutive - 2)
        except OverflowError:  # a long crash loop: far past the cap anyway
            return self.cap
        return min(self.cap, grown)

    def delay(self, consecutive: int, rng: random.Random) -> float:
        """The jittered delay, within ``[nominal * (1 - jitter), nominal]``."""
        nominal = self.nominal(consecutive)
        return nominal * (1.0 - self.jitter * rng.random())


NO_BACKOFF = Backoff(initial=0.0, cap=0.0, jitter=0.0)
"""Restart at once, every time (tests and supervisors of supervisors)."""


@dataclass(frozen=True)
class ChildSpec:
    """How to run one worker actor under a supervisor."""

    id: str
    factory: Callable[[], Actor]
    """Builds a fresh actor for each incarnation."""
    restart: Restart = Restart.PERMANENT
    shutdown: float | None = 5.0
    """Seconds the actor gets to stop before it is abandoned; ``None``: no limit."""
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_shutdown(self.shutdown)


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor, its children in start order, and its restart policy."""

    id: str
    children: Sequence[ChildSpec | SupervisorSpec]
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 5
    """Restarts allowed within ``period``; one more escalates to the parent."""
    period: float = 10.0
    """Length of the sliding window for ``intensity``, seconds."""
    backoff: Backoff = field(default_factory=Backoff)
    restart: Restart = Restart.PERMANENT
    """How this supervisor is treated by its own parent."""
    shutdown: float | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_shutdown(self.shutdown)
        if self.intensity < 0:
            raise ValueError("intensity must not be negative")
        if self.period <= 0:
            raise ValueError("period must be positive")
        ids = [child.id for child in self.children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"supervisor {self.id!r} has duplicate child ids: {duplicates}")


def _check_id(ident: str) -> None:
    if not ident or "/" in ident or not ident.isprintable():
        raise ValueError(f"invalid id {ident!r}: use a non-empty name without '/'")


def _check_shutdown(shutdown: float | None) -> None:
    if shutdown is not None and shutdown < 0:
        raise ValueError("shutdown timeout must not be negative")
