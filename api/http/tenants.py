"""Who a request comes from: its API key's tenant.

A server with keys is shared, and a tenant is the unit it isolates and
shares fairly: a team named in the tenants file (:mod:`api.config.tenants_file`)
whose keys act as one, or a key of ``api_keys`` listed in no team, which is a
tenant of its own. The directory is swapped whole when the tenants change at
run time, so a request sees either the old or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from api.config.tenants_file import RESERVED_PREFIX, TenantsFile
from api.http.asgi import Request


@dataclass(frozen=True)
class Tenant:
    """The tenant a request authenticated as."""

    name: str
    """A team's name, or ``key-`` and 12 hex digits of the key's digest."""
    key_digest: str
    """16 hex digits of the key's SHA-256: per-key figures name the key by this."""
    weight: float = 1.0
    """Its share of the engine while tenants wait (the tenants file's ``weight``)."""


def key_digest(key: bytes) -> str:
    """The digest a key is known by in logs, limits and names (never the key)."""
    return hashlib.sha256(key).hexdigest()[:16]


class TenantDirectory:
    """The accepted API keys and the tenant of each."""

    def __init__(self, api_keys: Sequence[str], tenants: TenantsFile | None = None) -> None:
        self._api_keys = tuple(api_keys)
        self._by_digest: dict[bytes, Tenant] = {}
        self.file = TenantsFile(())
        """What the tenants file said (its limits go to intake)."""
        self.reload(tenants or TenantsFile(()))

    def reload(self, tenants: TenantsFile) -> None:
        """Take a new tenants file (a run-time edit): requests from now on see only it.

        The map is built aside and swapped in one assignment, so a request
        never sees half of the old file and half of the new.
        """
        by_digest: dict[bytes, Tenant] = {}
        entries: list[tuple[str, str | None, float]] = [
            (key, None, tenants.default.weight) for key in self._api_keys
        ]
        for spec in tenants.tenants:
            entries += [(key, spec.name, spec.limits.weight) for key in spec.keys]
        for key, team, weight in entries:
            short = key_digest(key.encode())
            name = team if team is not None else f"{RESERVED_PREFIX}{short[:12]}"
            by_digest[hashlib.sha256(key.encode()).digest()] = Tenant(name, short, weight)
        self._by_digest, self.file = by_digest, tenants

    def __bool__(self) -> bool:
        """Whether any key is configured (else the API is open, and tenant-less)."""
        return bool(self._by_digest)

    def resolve(self, presented: bytes | None) -> Tenant | None:
        """The tenant of ``presented``, or ``None`` when it is no accepted key.

        Keys are looked up by their SHA-256, so how long the lookup takes says
        nothing about how much of a guess matched any key.
        """
        if presented is None:
            return None
        return self._by_digest.get(hashlib.sha256(presented).digest())

    def tenants(self) -> list[str]:
        """Every tenant's name, each once, in the order they were configured."""
        return list(dict.fromkeys(tenant.name for tenant in self._by_digest.values()))


def tenant_of(request: Request) -> str | None:
    """The name of the tenant that sent ``request``; ``None`` on a server without keys."""
    tenant = request.scope.get("state", {}).get("tenant")
    return tenant if isinstance(tenant, str) else None
