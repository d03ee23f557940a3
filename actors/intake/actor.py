"""The intake actor: admission control in front of the generation actor.

Every generating request (completions, Messages, Responses, embeddings) asks
:class:`~actors.intake.protocol.Admit` before anything is tokenized. The
checks run cheapest first and stop at the first that refuses:

1. draining: the server is shutting down (``draining``, HTTP 503);
2. memory pressure: the injected ``pressure()`` reading (``pressure``);
3. the client's token bucket (``rate_limited``); an attempt that gets this
   far costs a token even if a later check refuses it, so a client that
   ignores ``Retry-After`` and spins on a full queue is throttled like any
   other;
4. requests in flight against ``queue_max_requests`` (``queue_full``);
5. prompt tokens in flight plus this request's estimate against
   ``queue_max_prompt_tokens`` (``tokens_full``). A request that alone exceeds
   the budget is still admitted when nothing else is in flight: the estimate
   errs high, and whether the prompt fits the model is the engine's call, so
   refusing it would turn it away forever;
6. the KV cache of the requests in flight plus this one's against what the
   memory budget has left after the weights and the prefix cache
   (``memory_full``; :mod:`actors.intake.memory`), with the same exception.

Every piece of state lives in an :class:`~actors.intake.state.IntakeState`
built once by the composition root and shared by every incarnation. The one
call that may fail, the pressure reading, comes before a handler books,
charges or counts anything, so a crash never leaves the state half-updated.
Handlers never await: statistics are answered at once, never behind inference.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from actors.intake.protocol import (
    Admit,
    CrashIntake,
    GetIntakeStats,
    IntakeStats,
    Release,
    ReportMemory,
    ReportPressure,
    SetRateLimit,
    SetTenants,
    StartDraining,
    StopDraining,
    Tokenized,
)
from actors.intake.state import IntakeState
from runtime.actor import Actor
from runtime.mailbox import MailboxConfig
from runtime.messages import Message
from runtime.spec import ChildSpec

log = logging.getLogger("troupe.intake")


class IntakeCrash(RuntimeError):
    """Raised by the handler on :class:`~actors.intake.protocol.CrashIntake`."""


class IntakeActor(Actor):
    """Answers the intake protocol over an :class:`IntakeState` that outlives it."""

    def __init__(self, state: IntakeState, *, pressure: Callable[[], bool] | None = None) -> None:
        self.state = state
        # Without a reading, pressure is what was last reported (ReportPressure).
        self.pressure = pressure or self._reported_pressure
        self._reported = False

    def _reported_pressure(self) -> bool:
        return self._reported

    async def handle(self, message: Message) -> Message | None:
        """Answer one message of the intake protocol; nothing here awaits."""
        clock = self.ctx.clock
        answer: Message | None = None
        match message:
            case Admit():
                answer = self.state.admit(
                    message, now=clock.monotonic(), wall=clock.wall(), pressure=self.pressure
                )
            case Tokenized(request_id=request_id, prompt_tokens=prompt_tokens):
                self.state.tokenized(request_id, prompt_tokens)
            case Release(request_id=request_id, outcome=outcome):
                self.state.release(request_id, outcome, now=clock.monotonic())
            case GetIntakeStats():
                answer = self._stats()
            case StartDraining():
                answer = self._set_draining(True)
            case StopDraining():
                answer = self._set_draining(False)
            case ReportPressure(under_pressure=under_pressure):
                self._reported = under_pressure
            case ReportMemory(model=model, kv_bytes_per_token=per_token, model_bytes=model_bytes):
                self.state.memory.report(model, per_token, model_bytes)
            case SetRateLimit(rate_limit_per_second=rate, rate_limit_burst=burst):
                # A value start-up would refuse changes nothing: the stats say what holds.
                with contextlib.suppress(ValueError):
                    self.state.set_rate_limit(rate, burst, now=clock.monotonic())
                answer = self._stats()
            case SetTenants(policy=policy):
                with contextlib.suppress(ValueError):
                    self.state.set_tenants(policy, now=clock.monotonic())
                answer = self._stats()
            case CrashIntake():
                raise IntakeCrash("crash requested")
            case _:
                answer = await super().handle(message)
        return answer

    def _stats(self) -> IntakeStats:
        clock = self.ctx.clock
        under_pressure = self.pressure()  # read first: it is the one call that may fail
        return self.state.stats(
            now=clock.monotonic(), wall=clock.wall(), under_pressure=under_pressure
        )

    def _set_draining(self, draining: bool) -> IntakeStats:
        if draining != self.state.draining:
            log.info("intake %s", "draining" if draining else "admitting again")
        self.state.draining = draining
        return self._stats()


def intake_child(
    state: IntakeState,
    *,
    pressure: Callable[[], bool] | None = None,
    child_id: str = "intake",
    mailbox: MailboxConfig | None = None,
) -> ChildSpec:
    """The child spec of an intake actor whose every incarnation shares ``state``.

    Args:
        state: The durable state, built once by the composition root.
        pressure: Reads the memory-pressure flag, e.g. ``lambda:
            monitor.under_pressure`` for a ``MemoryMonitor``; ``None``: never.
        child_id: The actor's id (the HTTP layer looks up ``intake``).
        mailbox: The mailbox; ``None``: the default (1024, ``REJECT``), whose
            ``MailboxFull`` the HTTP layer answers with 429.

    Returns:
        A permanent child with the default 5 s shutdown.
    """
    return ChildSpec(
        child_id,
        lambda: IntakeActor(state, pressure=pressure),
        mailbox=mailbox or MailboxConfig(),
    )
