"""mlx-troupe's generic actor runtime: messages, actors, supervision. Never imports MLX."""

from runtime.actor import DEFAULT_ASK_TIMEOUT, Actor, ActorContext, ActorRef
from runtime.clock import Clock, ManualClock, SystemClock
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
from runtime.mailbox import MailboxConfig, Overflow
from runtime.messages import Message, decode, encode, message_types
from runtime.node import ExitKind
from runtime.slowdown import SlowDown, SlowedDown
from runtime.spec import NO_BACKOFF, Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.status import ActorStatus, NodeState, SupervisorStatus, SystemStatus
from runtime.system import ActorSystem

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
    "DeliveryError",
    "EventBus",
    "ExitActor",
    "ExitKind",
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
