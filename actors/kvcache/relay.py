"""The kv-cache actor when the cache lives in another actor's care (the engine process).

It answers the same protocol as :class:`~actors.kvcache.actor.KVCacheActor`
by asking the owner of the cache, so the HTTP layer and the drills address
``kvcache`` whichever shape the tree has. When the owner cannot answer (it is
restarting, or slow), the reply is :class:`CacheUnavailable` rather than a
crash of this actor: an engine restart must not count against the
supervisor's intensity twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from actors.intake.protocol import ReportPressure
from actors.kvcache.control import CACHE_REQUESTS, CacheRequest
from actors.kvcache.protocol import PressureReport
from runtime.actor import Actor
from runtime.errors import TroupeError, describe_failure
from runtime.messages import Message

RELAY_TIMEOUT = 60.0
"""Seconds to wait for the owner (a save of a large cache comes first)."""


class CacheUnavailable(Message, frozen=True, kw_only=True):
    """The cache's owner did not answer (restarting, gone, or too slow)."""

    reason: str


class RelayedCacheActor(Actor):
    """Answers the kv-cache protocol by asking actor ``owner``."""

    def __init__(self, owner: str, wrap: Callable[..., Message], *, intake: str = "intake") -> None:
        self._owner = owner
        self._wrap = wrap
        self._intake = intake

    async def handle(self, message: Message) -> Message | None:
        """Relay a kv-cache request; anything else is not for this actor."""
        if not isinstance(message, CACHE_REQUESTS):
            return await super().handle(message)
        request: CacheRequest = message
        try:
            answer = await self.ctx.lookup(self._owner).ask(
                self._wrap(request=request), timeout=RELAY_TIMEOUT
            )
        except TroupeError as exc:
            return CacheUnavailable(reason=describe_failure(exc))
        if isinstance(answer, PressureReport) and answer.enabled:
            # Before the answer: whoever simulated pressure finds new requests shed.
            with contextlib.suppress(TroupeError, LookupError):
                self.ctx.lookup(self._intake).tell_nowait(
                    ReportPressure(under_pressure=answer.under_pressure)
                )
        return answer
