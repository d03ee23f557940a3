"""Prefix affinity for Ray Serve: requests that share a prompt prefix go to one replica.

A :class:`PrefixAffinityRouter` lives in each caller of the model deployment
(the ingress) and remembers, for each prefix block digest it has routed, the
replica it sent it to (bounded, least recently used first out). A request goes
to the replica holding its longest remembered prefix, unless that replica has
``imbalance`` more requests in flight than the least loaded one; then, and for
a prefix nobody holds, it goes to the least loaded replica. Load is what this
router has in flight on each replica (exact for its own requests), or Serve's
cached queue length if that is larger (other callers' requests). Replicas that
died are forgotten at once, so their prefixes go elsewhere on the next request.

Each choice is a ranking of single replicas, so Serve gives the replica to
exactly the request it was chosen for (no FIFO mixin, which would hand it to
the oldest waiting request instead), and moves down the ranking only when a
replica has no room (``max_ongoing_requests``).
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from typing import Any, Final

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from api.replicas.messages import RouteHint

DEFAULT_IMBALANCE: Final = 4
"""Requests more in flight on the holder than on the least loaded replica before affinity yields."""
DEFAULT_REMEMBERED: Final = 65536
"""Prefix blocks remembered (a few MiB of router state)."""


class PrefixAffinityRouter(RequestRouter):
    """Routes by prompt prefix, load balancing otherwise (a Serve ``RequestRouter``)."""

    def initialize_state(self, **kwargs: Any) -> None:
        """Serve calls this with the deployment's ``request_router_kwargs``."""
        self._imbalance = int(kwargs.get("imbalance", DEFAULT_IMBALANCE))
        self._remembered = int(kwargs.get("remembered", DEFAULT_REMEMBERED))
        self._holders: OrderedDict[int, ReplicaID] = OrderedDict()
        self._in_flight: Counter[ReplicaID] = Counter()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """One replica per rank: the prefix's holder (unless overloaded), then by load."""
        if not candidate_replicas:
            return []
        ranked = sorted(candidate_replicas, key=lambda r: (self._load(r), random.random()))
        hint = hint_of(pending_request)
        holder = self._holder(hint, candidate_replicas)
        if holder is not None and self._load(holder) <= self._load(ranked[0]) + self._imbalance:
            ranked = [holder, *(r for r in ranked if r.replica_id != holder.replica_id)]
        self._remember(hint, ranked[0].replica_id)
        return [[replica] for replica in ranked]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        """Where Serve reports the replica taken (when it does), remember that one."""
        self._remember(hint_of(pending_request), replica_id)

    def on_send_request(self, replica_id: ReplicaID) -> None:
        """A request of this router went to ``replica_id``."""
        super().on_send_request(replica_id)
        self._in_flight[replica_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """A request of this router on ``replica_id`` ended (answered, failed or cancelled)."""
        super().on_request_completed(replica_id, internal_request_id)
        if self._in_flight[replica_id] > 0:
            self._in_flight[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget what a dead replica held: its cache died with it."""
        super().on_replica_actor_died(replica_id)
        self._in_flight.pop(replica_id, None)
        for block in [b for b, holder in self._holders.items() if holder == replica_id]:
            del self._holders[block]

    def _load(self, replica: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(replica.replica_id) or 0
        return max(self._in_flight[replica.replica_id], cached)

    def _holder(self, hint: RouteHint, candidates: list[RunningReplica]) -> RunningReplica | None:
        """The candidate holding the longest prefix of ``hint``, if any does."""
        by_id = {replica.replica_id: replica for replica in candidates}
        for block in reversed(hint.blocks):
            holder = self._holders.get(block)
            if holder is not None and holder in by_id:
                return by_id[holder]
        return None

    def _remember(self, hint: RouteHint, replica_id: ReplicaID) -> None:
        for block in hint.blocks:
            self._holders[block] = replica_id
            self._holders.move_to_end(block)
        while len(self._holders) > self._remembered:
            self._holders.popitem(last=False)


def hint_of(pending_request: PendingRequest | None) -> RouteHint:
    """The request's route hint (the ``hint`` keyword of the handle call), or none."""
    if pending_request is None:
        return RouteHint()
    hint = pending_request.kwargs.get("hint")
    return hint if isinstance(hint, RouteHint) else RouteHint()
