"""Intake: admission control in front of generation.

The HTTP layer asks :class:`Admit` before tokenizing a request and tells
:class:`Release` when it ends; :class:`IntakeActor` answers from an
:class:`IntakeState` that the composition root builds once, so in-flight
counts survive a restart of the actor. The arithmetic (token buckets, drain
rate, prompt estimates) is in :mod:`actors.intake.limits`.
"""

from actors.intake.actor import IntakeActor, IntakeCrash, intake_child
from actors.intake.limits import (
    ClientBuckets,
    DrainRate,
    TokenBucket,
    backlog_retry_after,
    estimate_prompt_tokens,
)
from actors.intake.protocol import (
    Admit,
    Admitted,
    CrashIntake,
    GetIntakeStats,
    IntakeStats,
    Outcome,
    Rejected,
    Release,
    SetRateLimit,
    ShedReason,
    StartDraining,
    StopDraining,
    Tokenized,
)
from actors.intake.settings import IntakeSettings
from actors.intake.state import IntakeState

__all__ = [
    "Admit",
    "Admitted",
    "ClientBuckets",
    "CrashIntake",
    "DrainRate",
    "GetIntakeStats",
    "IntakeActor",
    "IntakeCrash",
    "IntakeSettings",
    "IntakeState",
    "IntakeStats",
    "Outcome",
    "Rejected",
    "Release",
    "SetRateLimit",
    "ShedReason",
    "StartDraining",
    "StopDraining",
    "TokenBucket",
    "Tokenized",
    "backlog_retry_after",
    "estimate_prompt_tokens",
    "intake_child",
]
