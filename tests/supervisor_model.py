"""A pure model of a flat OTP supervisor, for the stateful supervisor test.

A few lines of plain Python that say what OTP's ``supervisor`` would have done:

* a permanent child is restarted after any exit, a transient one only after a
  crash, a temporary one never;
* ``one_for_one`` restarts the child that exited, ``one_for_all`` every child,
  ``rest_for_one`` that child and those started after it; temporary siblings
  caught in a group restart are removed instead;
* every restart decision (a group restart counts once) is logged; restarts at
  most ``period`` seconds old count (the boundary is included) and
  ``intensity + 1`` of them make the supervisor escalate, which stops the
  system for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hypothesis import event

from runtime import Restart, Strategy

ExitHow = Literal["crash", "normal", "shutdown"]


def wants_restart(restart: Restart, how: ExitHow) -> bool:
    """OTP: permanent always, transient after an abnormal exit, temporary never."""
    if restart is Restart.PERMANENT:
        return True
    return restart is Restart.TRANSIENT and how == "crash"


@dataclass
class ChildModel:
    """What OTP says about one worker."""

    name: str
    restart: Restart
    alive: bool = True
    """Running; otherwise its mailbox is closed and sends fail with ``ActorStopped``."""
    incarnation: int = 1
    restarts_total: int = 0
    restart_times: list[float] = field(default_factory=list)
    notes: int = 0
    """Notes accepted by its mailbox; all of them are handled before a later ping."""
    crashed: bool = False
    stalled_until: float | None = None
    """The clock time its running incarnation waits for; asks queue behind it."""

    @property
    def stalled(self) -> bool:
        """Whether the running incarnation is stuck in a stall."""
        return self.alive and self.stalled_until is not None


@dataclass
class SupervisorModel:
    """A flat OTP supervisor with no backoff, as plain data."""

    strategy: Strategy
    intensity: int
    period: float
    children: list[ChildModel]
    now: float
    restart_log: list[float] = field(default_factory=list)
    escalated: bool = False

    def child(self, name: str) -> ChildModel:
        """The child called ``name``."""
        return next(c for c in self.children if c.name == name)

    def advance(self, seconds: float) -> None:
        """Move time on; stalls that are due end."""
        self.now += seconds
        for child in self.children:
            if child.stalled_until is not None and child.stalled_until <= self.now:
                child.stalled_until = None

    def group(self, child: ChildModel) -> list[ChildModel]:
        """The children the strategy restarts when ``child`` exits, in start order."""
        match self.strategy:
            case Strategy.ONE_FOR_ONE:
                return [child]
            case Strategy.ONE_FOR_ALL:
                return list(self.children)
            case Strategy.REST_FOR_ONE:
                return self.children[self.children.index(child) :]

    def window_after_one_more(self) -> list[float]:
        """OTP's add_restart: the restarts at most ``period`` old, plus one now."""
        threshold = self.now - self.period
        return [t for t in self.restart_log if t >= threshold] + [self.now]

    def exited(self, name: str, how: ExitHow) -> None:
        """The running child ``name`` exited on its own."""
        child = self.child(name)
        child.alive = False
        child.stalled_until = None
        child.crashed = child.crashed or how == "crash"
        if not wants_restart(child.restart, how):
            return
        before = len(self.restart_log)
        self.restart_log = self.window_after_one_more()
        on_boundary = self.restart_log.count(self.now - self.period)
        if len(self.restart_log) <= before:
            event("model: the intensity window slid")
        if on_boundary:
            event("model: a restart exactly `period` old still counts")
        if len(self.restart_log) > self.intensity:
            if len(self.restart_log) - on_boundary <= self.intensity:
                event("model: the window's boundary decides an escalation")
            self.escalated = True
            for other in self.children:
                other.alive = False
                other.stalled_until = None
            return
        for member in self.group(child):
            member.stalled_until = None
            if member is not child and member.restart is Restart.TEMPORARY:
                if member.alive:
                    event("model: a group restart removes a temporary sibling")
                member.alive = False  # terminated and removed, never restarted
                continue
            # OTP keeps a transient child that exited normally in its child
            # list (with no process); a group restart starts it again.
            if member is not child and not member.alive:
                event("model: a group restart revives a stopped transient")
            member.alive = True
            member.incarnation += 1
            member.restarts_total += 1
            member.restart_times.append(self.now)

    def restarts_in_window(self, child: ChildModel) -> int:
        """Restarts of ``child`` at most ``period`` seconds old."""
        return sum(1 for t in child.restart_times if t >= self.now - self.period)
