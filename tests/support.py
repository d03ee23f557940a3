"""Test actors that record what happens to them, and helpers to build trees of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from runtime import (
    Actor,
    ActorStatus,
    ActorSystem,
    ChildSpec,
    ExitActor,
    ExitKind,
    MailboxConfig,
    Message,
    Restart,
)


class Ping(Message, frozen=True, kw_only=True):
    """Answered with a Pong carrying the same number."""

    n: int = 0


class Pong(Message, frozen=True, kw_only=True):
    """The answer to Ping and Hold; names the incarnation that answered."""

    n: int
    incarnation: int


class Crash(Message, frozen=True, kw_only=True):
    """Makes the handler raise (with a message that must never leak)."""


class Exit(Message, frozen=True, kw_only=True):
    """Makes the handler end the incarnation with ExitActor(reason)."""

    reason: str


class Hold(Message, frozen=True, kw_only=True):
    """Makes the handler wait for the journal's gate ``key``, then answer."""

    key: str
    n: int = 0


class CrashLater(Message, frozen=True, kw_only=True):
    """Starts a background task that crashes the actor once gate ``key`` opens."""

    key: str


SECRET = "do-not-leak: /home/alice/prompt.txt sk-12345"


@dataclass
class Journal:
    """What every probe did, in order, plus switches that make probes misbehave."""

    lines: list[str] = field(default_factory=list)
    incarnations: dict[str, int] = field(default_factory=dict)
    fail_start: set[str] = field(default_factory=set)
    stop_raises: set[str] = field(default_factory=set)
    stubborn: set[str] = field(default_factory=set)
    """Probes whose Hold ignores cancellation (a shielded wait)."""
    stop_opens: dict[str, str] = field(default_factory=dict)
    """Probe name -> gate its on_stop opens."""
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    handled: list[tuple[str, int]] = field(default_factory=list)

    def gate(self, key: str) -> anyio.Event:
        """The event for ``key``, created on first use."""
        if key not in self.gates:
            self.gates[key] = anyio.Event()
        return self.gates[key]

    def of(self, verb: str) -> list[str]:
        """Names of the probes that did ``verb``, in order."""
        return [line.split()[1] for line in self.lines if line.split()[0] == verb]


class Probe(Actor):
    """An actor that journals its lifecycle and obeys the test messages."""

    def __init__(self, name: str, journal: Journal) -> None:
        self.name = name
        self.journal = journal
        journal.incarnations[name] = journal.incarnations.get(name, 0) + 1
        self.incarnation = journal.incarnations[name]

    async def on_start(self) -> None:
        if self.name in self.journal.fail_start:
            self.journal.lines.append(f"failstart {self.name}")
            raise RuntimeError(SECRET)
        self.journal.lines.append(f"start {self.name}")

    async def handle(self, message: Message) -> Message | None:
        match message:
            case Ping(n=n):
                self.journal.handled.append((self.name, n))
                return Pong(n=n, incarnation=self.incarnation)
            case Crash():
                raise RuntimeError(SECRET)
            case Exit(reason=reason):
                raise ExitActor(reason)
            case Hold(key=key, n=n):
                await self._hold(key)
                self.journal.handled.append((self.name, n))
                return Pong(n=n, incarnation=self.incarnation)
            case CrashLater(key=key):
                self.ctx.start_soon(self._crash_when_open, key)
                return None
        raise AssertionError(f"unexpected message {message!r}")

    async def _hold(self, key: str) -> None:
        if self.name in self.journal.stubborn:
            with anyio.CancelScope(shield=True):
                await self.journal.gate(key).wait()
        else:
            await self.journal.gate(key).wait()

    async def _crash_when_open(self, key: str) -> None:
        await self.journal.gate(key).wait()
        raise RuntimeError(SECRET)

    async def on_stop(self, exit_kind: ExitKind) -> None:
        self.journal.lines.append(f"stop {self.name} {exit_kind.value}")
        if self.name in self.journal.stop_opens:
            self.journal.gate(self.journal.stop_opens[self.name]).set()
        if self.name in self.journal.stop_raises:
            raise RuntimeError(SECRET)


def probe(
    name: str,
    journal: Journal,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown: float | None = 5.0,
    mailbox: MailboxConfig | None = None,
) -> ChildSpec:
    """A child spec whose factory builds a fresh Probe each incarnation."""
    factory: Callable[[], Actor] = lambda: Probe(name, journal)  # noqa: E731
    return ChildSpec(
        name, factory, restart=restart, shutdown=shutdown, mailbox=mailbox or MailboxConfig()
    )


def worker(system: ActorSystem, name: str) -> ActorStatus:
    """The status of worker ``name``, wherever it sits in the tree."""
    found = system.status().root.find(name)
    assert isinstance(found, ActorStatus), f"no worker called {name!r}"
    return found
