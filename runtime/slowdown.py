"""Slowing an actor down on purpose: a drill for back-pressure and timeouts.

Any actor can be slowed through its reference, without its code knowing:
:class:`SlowDown` is handled by the actor's cell, not by the actor, and makes
the cell wait ``seconds`` before each of the next ``messages`` messages it
hands to the actor. The setting belongs to the actor's place in the tree, so
it survives restarts; ``messages=0`` ends it. Asks queue behind the delay like
any message, which is the point: callers see a slow actor, with its mailbox
filling up and their deadlines passing.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.clock import Clock
from runtime.messages import Message


class SlowDown(Message, frozen=True, kw_only=True):
    """Delay each of the next ``messages`` messages by ``seconds`` (answered by the cell)."""

    seconds: float
    messages: int


class SlowedDown(Message, frozen=True, kw_only=True):
    """The answer to :class:`SlowDown`: the messages that will now be delayed."""

    messages: int


@dataclass
class Slowdown:
    """A cell's pending delays."""

    seconds: float = 0.0
    messages: int = 0

    def set(self, request: SlowDown) -> SlowedDown:
        """Apply ``request`` (negative values count as zero)."""
        self.seconds = max(0.0, request.seconds)
        self.messages = max(0, request.messages) if self.seconds > 0 else 0
        return SlowedDown(messages=self.messages)

    async def wait(self, clock: Clock) -> None:
        """Before a message: wait if a delay is pending."""
        if self.messages <= 0:
            return
        self.messages -= 1
        await clock.sleep_until(clock.monotonic() + self.seconds)
