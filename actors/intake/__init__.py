"""Intake: admission control in front of generation.

The HTTP layer asks :class:`~actors.intake.protocol.Admit` before tokenizing
a request and tells :class:`~actors.intake.protocol.Release` when it ends;
:class:`~actors.intake.actor.IntakeActor` answers from an
:class:`~actors.intake.state.IntakeState` that the composition root builds
once, so in-flight counts survive a restart of the actor. The arithmetic
(token buckets, drain rate, prompt estimates) is in :mod:`actors.intake.limits`.
"""
