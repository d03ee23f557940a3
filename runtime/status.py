"""Status snapshots of the supervision tree, as messages.

``troupe status``, ``GET /v1/supervisor`` and health checks all read these; they
are plain data, so they encode to JSON or msgpack unchanged.
"""

from __future__ import annotations

import enum

from runtime.messages import Message


class NodeState(enum.StrEnum):
    """Where an actor or supervisor is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    ABANDONED = "abandoned"


class Failure(Message, frozen=True, kw_only=True):
    """The last abnormal exit: a sanitized one-line reason and when it happened."""

    reason: str
    at: float


class ActorStatus(Message, frozen=True, kw_only=True):
    """One worker actor."""

    name: str
    path: str
    state: NodeState
    restart: str
    incarnation: int
    restarts_in_window: int
    restarts_total: int
    last_failure: Failure | None
    mailbox_depth: int
    mailbox_capacity: int
    dead_letters: int
    uptime_seconds: float | None


class SupervisorStatus(Message, frozen=True, kw_only=True):
    """One supervisor and, recursively, its children in start order."""

    name: str
    path: str
    state: NodeState
    strategy: str
    incarnation: int
    intensity: int
    period_seconds: float
    restarts_in_window: int
    restarts_total: int
    last_failure: Failure | None
    uptime_seconds: float | None
    children: list[ActorStatus | SupervisorStatus]

    def find(self, name: str) -> ActorStatus | SupervisorStatus | None:
        """The node called ``name`` in this subtree (depth first), if any."""
        for child in self.children:
            if child.name == name:
                return child
            if isinstance(child, SupervisorStatus) and (found := child.find(name)):
                return found
        return None

    def workers(self) -> list[ActorStatus]:
        """Every worker actor of this subtree, depth first in start order."""
        found: list[ActorStatus] = []
        for child in self.children:
            found.extend(child.workers() if isinstance(child, SupervisorStatus) else [child])
        return found


class SystemStatus(Message, frozen=True, kw_only=True):
    """The whole tree plus system-wide counters."""

    at: float
    root: SupervisorStatus
    dead_letters: int
    events_published: int
    events_dropped: int
    failure: str | None
    """Why the system stopped, when its root supervisor escalated."""
