"""What a supervisor's control loop handles: child exits, due restarts, stop requests.

They go through one unbounded queue so that posting never waits; it only
ever holds one exit per child incarnation, one event per restart timer and
stop requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.node import ExitInfo, Node


@dataclass(frozen=True)
class ChildExited:
    """A started incarnation of ``node`` ended."""

    node: Node
    incarnation: int
    exit: ExitInfo


@dataclass(frozen=True)
class RestartDue:
    """The backoff of the pending restart ``token`` is over."""

    token: int


@dataclass(frozen=True)
class StopRequested:
    """The parent (or the system) asks the supervisor to stop."""


Control = ChildExited | RestartDue | StopRequested


@dataclass
class PendingRestart:
    """A restart of ``nodes`` waiting for its backoff; ``scope`` cancels its timer."""

    nodes: list[Node]
    delay: float
    deadline: float
    scope: anyio.CancelScope


def control_queue() -> tuple[MemoryObjectSendStream[Control], MemoryObjectReceiveStream[Control]]:
    """A fresh, unbounded control queue."""
    return anyio.create_memory_object_stream[Control](math.inf)
