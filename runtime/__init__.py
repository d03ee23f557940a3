"""mlx-troupe's generic actor runtime: messages, actors, supervision. Never imports MLX.

The names below are loaded on first use (PEP 562), so that importing one
plain-data module (``runtime.messages``, ``runtime.errors``, ``runtime.wire``)
does not pull in anyio: the engine process imports those and must stay free
of any event loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.actor import DEFAULT_ASK_TIMEOUT, Actor, ActorRef
    from runtime.clock import Clock, ManualClock, SystemClock
    from runtime.context import ActorContext, DeferredReply
    from runtime.errors import (
        ActorDied,
        ActorStopped,
        AskTimeout,
        ChildStartError,
        DeliveryError,
        ExitActor,
        MailboxFull,
        SupervisorEscalated,
        TroupeError,
        UnexpectedReply,
        describe_failure,
    )
    from runtime.events import EventBus, Subscription
    from runtime.inbox import Inbox, Inboxes, InboxInUse
    from runtime.mailbox import MailboxConfig, Overflow
    from runtime.messages import Message, decode, encode, message_types
    from runtime.node import ExitKind
    from runtime.slowdown import SlowDown, SlowedDown
    from runtime.spec import NO_BACKOFF, Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
    from runtime.status import ActorStatus, NodeState, SupervisorStatus, SystemStatus
    from runtime.system import ActorSystem

_HOMES = {
    "runtime.actor": ("DEFAULT_ASK_TIMEOUT", "Actor", "ActorRef"),
    "runtime.context": ("ActorContext", "DeferredReply"),
    "runtime.clock": ("Clock", "ManualClock", "SystemClock"),
    "runtime.errors": (
        "ActorDied",
        "ActorStopped",
        "AskTimeout",
        "ChildStartError",
        "DeliveryError",
        "ExitActor",
        "MailboxFull",
        "SupervisorEscalated",
        "TroupeError",
        "UnexpectedReply",
        "describe_failure",
    ),
    "runtime.events": ("EventBus", "Subscription"),
    "runtime.inbox": ("Inbox", "InboxInUse", "Inboxes"),
    "runtime.mailbox": ("MailboxConfig", "Overflow"),
    "runtime.messages": ("Message", "decode", "encode", "message_types"),
    "runtime.node": ("ExitKind",),
    "runtime.slowdown": ("SlowDown", "SlowedDown"),
    "runtime.spec": ("NO_BACKOFF", "Backoff", "ChildSpec", "Restart", "Strategy", "SupervisorSpec"),
    "runtime.status": ("ActorStatus", "NodeState", "SupervisorStatus", "SystemStatus"),
    "runtime.system": ("ActorSystem",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "NO_BACKOFF",
    "Actor",
    "ActorContext",
    "ActorDied",
    "ActorRef",
    "ActorStatus",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "ChildSpec",
    "ChildStartError",
    "Clock",
    "DeferredReply",
    "DeliveryError",
    "EventBus",
    "ExitActor",
    "ExitKind",
    "Inbox",
    "InboxInUse",
    "Inboxes",
    "MailboxConfig",
    "MailboxFull",
    "ManualClock",
    "Message",
    "NodeState",
    "Overflow",
    "Restart",
    "SlowDown",
    "SlowedDown",
    "Strategy",
    "Subscription",
    "SupervisorEscalated",
    "SupervisorSpec",
    "SupervisorStatus",
    "SystemClock",
    "SystemStatus",
    "TroupeError",
    "UnexpectedReply",
    "decode",
    "describe_failure",
    "encode",
    "message_types",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
