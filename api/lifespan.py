"""The actor system's life under hypercorn's lifespan: started before serving, stopped after.

hypercorn sends ``lifespan.startup`` before it serves and ``lifespan.shutdown``
after its last connection. Between the two the actor system runs; what talks
to it (intake's client, the metrics observer, the audit log, the model's
figures) is bound and unbound through :class:`LifespanHooks`, which the
application composes, so this module knows none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from actors.tree import Inference
from api.http.asgi import Receive, Send
from api.http.problems import HTTPProblem
from runtime import ActorSystem, ChildStartError, describe_failure

log = logging.getLogger("troupe.server")


@dataclass(frozen=True)
class LifespanHooks:
    """What the application does when the system has started, and before it stops."""

    started: Callable[[ActorSystem], Awaitable[None]]
    """Bind to the running system and get ready to serve (the model's figures ...)."""
    stopping: Callable[[], Awaitable[None]]
    """The last connection is answered: end live streams, close what was opened."""


class SystemLifespan:
    """Runs the actor system for the ASGI lifespan and says whether it is up."""

    def __init__(self, inference: Inference, hooks: LifespanHooks) -> None:
        self._inference = inference
        self._hooks = hooks
        self.system: ActorSystem | None = None
        """The running system (``None`` before startup)."""
        self.started = anyio.Event()
        """Set once the actor system is up and the model loaded."""
        self.start_failure: str | None = None
        """Why startup failed (one sanitized line), if it did."""

    async def __call__(self, receive: Receive, send: Send) -> None:
        """One ASGI lifespan: start the system, serve until shutdown, stop it."""
        await receive()  # lifespan.startup
        inference = self._inference
        try:
            async with ActorSystem(inference.spec, events=inference.events) as system:
                self.system = system
                await self._hooks.started(system)
                self.started.set()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                await self._hooks.stopping()
        except ChildStartError as exc:
            self.start_failure = str(exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        except Exception as exc:
            log.error("the actor system failed: %s", describe_failure(exc))
        await send({"type": "lifespan.shutdown.complete"})

    def running(self) -> ActorSystem:
        """The running system, or the 503 that says the server is not ready."""
        if self.system is None or not self.system.running:
            raise HTTPProblem(503, "not-ready", "the server is not ready", (("retry-after", "1"),))
        return self.system

    def require_running(self) -> None:
        """Refuse (503) while the actor system is down: the serving pipeline's gate."""
        self.running()
