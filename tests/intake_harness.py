"""A running intake actor on a manual clock, with a memory-pressure switch, for the intake tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from actors.intake.actor import intake_child
from actors.intake.protocol import (
    Admit,
    Admitted,
    Ending,
    GetIntakeStats,
    IntakeStats,
    Rejected,
    Release,
)
from actors.intake.settings import IntakeSettings
from actors.intake.state import IntakeState
from runtime import NO_BACKOFF, ActorRef, ActorSystem, ManualClock, Message, SupervisorSpec


def request(
    request_id: str, client: str = "c", *, chars: int = 0, deadline: float | None = None
) -> Admit:
    return Admit(
        request_id=request_id, client=client, endpoint="chat", prompt_chars=chars, deadline=deadline
    )


def never() -> bool:
    return False


@dataclass
class Pressure:
    """A memory-pressure flag the test flips; ``fail`` makes the next reading raise."""

    value: bool = False
    fail: bool = False

    def __call__(self) -> bool:
        if self.fail:
            self.fail = False
            raise RuntimeError("memory reading failed")
        return self.value


@dataclass
class Intake:
    """A running intake actor, its shared state, clock and pressure switch."""

    ref: ActorRef
    state: IntakeState
    clock: ManualClock
    pressure: Pressure
    system: ActorSystem

    async def admit(self, request_id: str, client: str = "c", **kw: Any) -> Message | None:
        return await self.ref.ask(request(request_id, client, **kw), timeout=5.0)

    async def rejected(self, request_id: str, client: str = "c", *, chars: int = 0) -> Rejected:
        answer = await self.admit(request_id, client, chars=chars)
        assert isinstance(answer, Rejected), answer
        return answer

    async def admitted(self, request_id: str, client: str = "c", *, chars: int = 0) -> Admitted:
        answer = await self.admit(request_id, client, chars=chars)
        assert isinstance(answer, Admitted), answer
        return answer

    async def release(self, request_id: str, outcome: Ending = Ending.COMPLETED) -> None:
        await self.ref.tell(Release(request_id=request_id, outcome=outcome))
        # The actor reads the clock when it handles the tell: wait for that
        # before the test moves the clock on.
        await self.stats()

    async def stats(self, message: Message | None = None) -> IntakeStats:
        return await self.ref.ask(message or GetIntakeStats(), timeout=5.0, expect=IntakeStats)


@asynccontextmanager
async def running(settings: IntakeSettings | None = None) -> AsyncIterator[Intake]:
    state, clock, pressure = IntakeState(settings), ManualClock(), Pressure()
    spec = SupervisorSpec("root", [intake_child(state, pressure=pressure)], backoff=NO_BACKOFF)
    async with ActorSystem(spec, clock=clock) as system:
        yield Intake(system.ref("intake"), state, clock, pressure, system)
