"""The engine's waiting requests, served fairly across tenants instead of first come first served.

With one FIFO, a tenant that sends 64 long requests makes everyone else wait
behind all of them. Here every tenant has a queue of its own, and the next
request to enter the batch is chosen in two steps:

1. **Which tenant**: the one that has received the least service so far, in
   virtual time. Each request a tenant starts adds its cost divided by the
   tenant's weight to the tenant's virtual time, so over time tenants get
   service in proportion to their weights (weighted fair queuing, in the
   virtual-runtime form Linux's CFS scheduler uses). A tenant that had
   nothing waiting rejoins at the smallest virtual time of those waiting: an
   idle tenant banks no credit, and a busy one is not punished for the past.
2. **Which of its requests**: the lowest ``priority`` first (vLLM's rule:
   lower values run sooner), then the oldest.

A request's cost is the KV cache it may hold: its prompt tokens plus its
``max_tokens``, the same measure intake books. Requests of the keyless server
(tenant ``""``) all share one queue, which behaves as the FIFO it replaces
when no priorities are given.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from actors.generation.protocol import Generate


@dataclass
class _Tenant:
    vtime: float = 0.0
    """Service received so far, in cost per unit of weight."""
    waiting: list[tuple[int, int, Generate]] = field(default_factory=list)
    """A heap of (priority, arrival number, request)."""


def cost_of(request: Generate) -> int:
    """What starting ``request`` costs its tenant: the KV positions it may hold."""
    return len(request.prompt) + max(request.params.max_tokens, 0)


class FairQueue:
    """Waiting requests: per-tenant queues served by weighted fair queuing."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._arrivals = itertools.count()
        self._front = itertools.count(-1, -1)
        """Numbers for requests put back at the head (they were taken out first)."""
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Generate]:
        """Every waiting request, in no particular order."""
        for tenant in self._tenants.values():
            for _, _, request in tenant.waiting:
                yield request

    def push(self, request: Generate) -> None:
        """Queue ``request`` behind its tenant's requests of the same priority."""
        self._enqueue(request, next(self._arrivals))

    def push_front(self, requests: list[Generate]) -> None:
        """Put back requests that were taken out (in that order), ahead of their tenants' others."""
        for request in reversed(requests):
            self._enqueue(request, next(self._front))

    def peek(self) -> Generate | None:
        """The request :meth:`pop` would return, left in place."""
        chosen = self._choose()
        return None if chosen is None else chosen.waiting[0][2]

    def pop(self) -> Generate | None:
        """The next request to start, or ``None`` when none waits."""
        chosen = self._choose()
        if chosen is None:
            return None
        _, _, request = heapq.heappop(chosen.waiting)
        chosen.vtime += cost_of(request) / max(request.weight, 1e-9)
        self._size -= 1
        return request

    def remove(self, request_id: str) -> Generate | None:
        """Take out the waiting request ``request_id``, if it waits."""
        for tenant in self._tenants.values():
            for index, (_, _, request) in enumerate(tenant.waiting):
                if request.request_id == request_id:
                    tenant.waiting[index] = tenant.waiting[-1]
                    tenant.waiting.pop()
                    heapq.heapify(tenant.waiting)
                    self._size -= 1
                    return request
        return None

    def drain(self) -> list[Generate]:
        """Every waiting request (the engine is ending or starting over), queues emptied."""
        requests = [
            request for tenant in self._tenants.values() for _, _, request in tenant.waiting
        ]
        self._tenants.clear()
        self._size = 0
        return requests

    def _choose(self) -> _Tenant | None:
        """The waiting tenant with the least service; on a tie, the one waiting longest."""
        chosen: _Tenant | None = None
        for tenant in self._tenants.values():
            if tenant.waiting and (
                chosen is None
                or (tenant.vtime, tenant.waiting[0][1]) < (chosen.vtime, chosen.waiting[0][1])
            ):
                chosen = tenant
        return chosen

    def _enqueue(self, request: Generate, number: int) -> None:
        if not self._size:
            self._tenants.clear()  # nothing waits: past service counts for nothing now
        tenant = self._tenants.get(request.tenant)
        if tenant is None:
            tenant = self._tenants[request.tenant] = _Tenant()
        if not tenant.waiting:
            # Rejoining: no credit for the time it waited for nothing.
            floor = min((t.vtime for t in self._tenants.values() if t.waiting), default=0.0)
            tenant.vtime = max(tenant.vtime, floor)
        heapq.heappush(tenant.waiting, (request.priority, number, request))
        self._size += 1
