"""Loading on demand, as the generation actor of one of several models sees it.

In a several-model tree a model's engine starts without a process; the
generation actor asks the model keeper (:mod:`actors.models.keeper`) for it
when a request arrives, tells the keeper when it goes busy or idle (for the
keep-alive and least-recently-used unloading), and answers the requests that
wait with a clear failure if loading fails. A model that failed is not tried
again for :data:`~actors.generation.protocol.MODEL_RETRY_AFTER` seconds:
requests in that time fail at once instead of each paying for another load.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from actors.generation.protocol import MODEL_RETRY_AFTER, Failed, FailureKind, ModelUnavailable
from actors.models.protocol import ModelActivity, ModelWanted
from runtime.context import ActorContext, DeferredReply
from runtime.errors import DeliveryError


@dataclass(frozen=True)
class ModelPeers:
    """Whom a generation actor works with: its engine, and the keeper if it loads on demand."""

    model: str = ""
    """The served model's name ("" with a single model)."""
    engine: str = "engine"
    keeper: str | None = None
    """The model keeper's id; ``None``: the engine loads at start and stays loaded."""


@dataclass
class Demand:
    """The on-demand state of one model's generation actor."""

    peers: ModelPeers
    asked: bool = False
    """The keeper was asked for the model; an engine has not come up since."""
    failed_at: float | None = None
    waiters: list[DeferredReply] = field(default_factory=list)
    """Asks (``AwaitModel``) answered once an engine is up."""
    busy: bool = False
    """Whether the keeper was last told that requests are in flight."""
    loaded: bool = False
    """Whether the model is meant to be loaded: a restarted engine then reloads it."""

    @property
    def on_demand(self) -> bool:
        """Whether the model loads on demand (several models) rather than at start."""
        return self.peers.keeper is not None

    def retry_in(self) -> float | None:
        """Seconds until a failed model is tried again; ``None``: it has not failed lately."""
        if self.failed_at is None:
            return None
        left = MODEL_RETRY_AFTER - (time.monotonic() - self.failed_at)
        return left if left > 0 else None

    def unavailable(self) -> ModelUnavailable:
        """The answer to a wait while the model is failing."""
        return ModelUnavailable(model=self.peers.model, retry_after=self.retry_in() or 0.0)

    def failure(self, request_id: str, tokens_sent: int) -> Failed:
        """The end of a request whose model could not be loaded."""
        name = self.peers.model
        return Failed(
            request_id=request_id,
            kind=FailureKind.MODEL_UNAVAILABLE,
            retryable=False,
            detail=f"the model {name!r} could not be loaded; the server's log says why",
            tokens_sent=tokens_sent,
        )

    def want(self, ctx: ActorContext) -> None:
        """Ask the keeper for the model, once per load."""
        keeper = self.peers.keeper
        if keeper is None or self.asked:
            return
        self.asked = True
        with contextlib.suppress(DeliveryError, LookupError):
            ctx.lookup(keeper).tell_nowait(ModelWanted(model=self.peers.model))

    def up(self) -> list[DeferredReply]:
        """An engine came up: the waiters to answer."""
        self.asked, self.failed_at, self.loaded = False, None, True
        waiters, self.waiters = self.waiters, []
        return waiters

    def failed(self) -> list[DeferredReply]:
        """Loading failed: the waiters to answer with :meth:`unavailable`."""
        self.asked, self.failed_at, self.loaded = False, time.monotonic(), False
        waiters, self.waiters = self.waiters, []
        return waiters

    def activity(self, ctx: ActorContext, in_flight: int) -> None:
        """Tell the keeper when requests in flight go from none to some, or back."""
        keeper = self.peers.keeper
        if keeper is None or (in_flight > 0) == self.busy:
            return
        self.busy = in_flight > 0
        with contextlib.suppress(DeliveryError, LookupError):
            ctx.lookup(keeper).tell_nowait(
                ModelActivity(model=self.peers.model, in_flight=in_flight)
            )
