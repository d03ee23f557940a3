"""What health and status answer, from the supervision tree and the actors' figures.

Pure functions over snapshots (the tree's status, the engine's and the
cache's figures): :class:`~api.app.TroupeApp` gathers them without queueing
behind inference and answers ``/health/ready``, ``/health`` and
``/v1/supervisor`` with what these say.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.generation.protocol import EngineStats
from runtime import Message
from runtime.status import ActorStatus, NodeState, SupervisorStatus

CRITICAL_ACTORS = ("generation", "intake", "engine")
"""Actors without which the server is not ready (where the tree has them: ``engine``
exists only when the engine runs in its own process)."""


def not_ready_reasons(root: SupervisorStatus, draining: bool) -> list[str]:
    """Why the server is not ready (none: it is): draining, or a critical actor down."""
    reasons = ["draining"] if draining else []
    present = {node.name for node in root.workers()}
    for name in CRITICAL_ACTORS:
        node = root.find(name)
        if name not in present:
            continue
        if node is None or node.state != NodeState.RUNNING:
            reasons.append(_not_running(name))
    return reasons


def actors_health(root: SupervisorStatus, breaker: str) -> dict[str, str]:
    """Each actor's health; the kv-cache is degraded while its breaker is not closed."""
    actors = {node.name: _actor_health(node) for node in root.workers()}
    if breaker != "closed" and actors.get("kvcache") == "healthy":
        actors["kvcache"] = "degraded"
    return actors


def overall_health(actors: dict[str, str], not_ready: bool) -> str:
    """``unhealthy`` when not ready, ``degraded`` when an actor is not healthy, else ``healthy``."""
    if not_ready:
        return "unhealthy"
    states = set(actors.values())
    return "degraded" if "degraded" in states or "unhealthy" in states else "healthy"


def engine_counts(stats: EngineStats) -> dict[str, Any]:
    """Running and waiting sequences, weight loads, pending drills, recent recovery times."""
    return {
        "running": stats.running,
        "waiting": stats.waiting,
        "weights_loads": stats.weights_loads,
        "faults_pending": stats.faults_pending,
        "recovery_seconds": stats.recovery_seconds,
        "process": _untagged(stats.process),
    }


def _untagged(message: Message | None) -> Any:
    """A message as JSON, without the ``type`` tags of it and its fields."""
    if message is None:
        return None
    fields: dict[str, Any] = msgspec.to_builtins(message)
    return {
        key: {k: v for k, v in value.items() if k != "type"} if isinstance(value, dict) else value
        for key, value in fields.items()
        if key != "type"
    }


def _not_running(name: str) -> str:
    if name == "engine":
        return "no engine process is serving (starting or restarting)"
    return f"{name} is not running"


def _actor_health(node: ActorStatus) -> str:
    if node.state == NodeState.RUNNING:
        return "healthy"
    if node.state in (NodeState.RESTARTING, NodeState.STARTING):
        return "degraded"
    return "unhealthy"
