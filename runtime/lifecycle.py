"""Lifecycle events the supervisor tree publishes, one struct per kind.

Subscribers (the metrics actor, tests, ``troupe status --watch``) receive them
through :class:`runtime.events.EventBus`, which never blocks the publisher.
Paths name actors by their place in the tree (``root/engine/generation``);
reasons are sanitized by :func:`runtime.errors.describe_failure`.
"""

from __future__ import annotations

from runtime.messages import Message


class LifecycleEvent(Message, frozen=True, kw_only=True):
    """Something happened to the actor or supervisor at ``path``."""

    path: str
    at: float
    """Wall-clock time, seconds since the epoch."""


class Started(LifecycleEvent, frozen=True, kw_only=True):
    """The first incarnation started and is ready for messages."""

    incarnation: int


class Crashed(LifecycleEvent, frozen=True, kw_only=True):
    """An incarnation ended abnormally (or failed to start)."""

    reason: str


class Restarted(LifecycleEvent, frozen=True, kw_only=True):
    """A new incarnation started after an exit; ``delay`` was the backoff applied."""

    incarnation: int
    restarts_total: int
    delay: float


class Stopped(LifecycleEvent, frozen=True, kw_only=True):
    """The actor stopped and will not be restarted (or was stopped by its supervisor).

    ``exit`` is ``normal``, ``shutdown``, ``crash`` or ``abandoned`` (it ignored
    its shutdown timeout and was left behind).
    """

    exit: str


class Escalated(LifecycleEvent, frozen=True, kw_only=True):
    """A supervisor exceeded its restart intensity, stopped its children and gave up."""

    reason: str


Event = Started | Crashed | Restarted | Stopped | Escalated
