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

from actors.intake.protocol import TenantLimits
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


@dataclass(frozen=True)
class Team:
    """A named tenant as the operator sees it: how many keys, never which."""

    name: str
    keys: int
    limits: TenantLimits


def key_digest(key: bytes) -> str:
    """The digest a key is known by in logs, limits and names (never the key)."""
    return hashlib.sha256(key).hexdigest()[:16]


def _digests(key: str) -> tuple[bytes, str]:
    """A key's SHA-256 (what lookups match) and its short digest (what it is known by)."""
    full = hashlib.sha256(key.encode()).digest()
    return full, full.hex()[:16]


class TenantDirectory:
    """The accepted API keys and the tenant of each."""

    def __init__(self, api_keys: Sequence[str], tenants: TenantsFile | None = None) -> None:
        # Digests only, never a key: this object outlives start-up.
        self._api_keys = tuple(_digests(key) for key in api_keys)
        self._by_digest: dict[bytes, Tenant] = {}
        self.teams: tuple[Team, ...] = ()
        """The named tenants, without their keys (what the operator's view shows)."""
        self.default = TenantLimits()
        """The limits of every tenant not named in the file."""
        self.reload(tenants or TenantsFile(()))

    def reload(self, tenants: TenantsFile) -> None:
        """Take a new tenants file (a run-time edit): requests from now on see only it.

        The map is built aside and swapped in one assignment, so a request
        never sees half of the old file and half of the new.
        """
        by_digest: dict[bytes, Tenant] = {}
        for full, short in self._api_keys:
            name = f"{RESERVED_PREFIX}{short[:12]}"
            by_digest[full] = Tenant(name, short, tenants.default.weight)
        for spec in tenants.tenants:
            for full, short in map(_digests, spec.keys):
                by_digest[full] = Tenant(spec.name, short, spec.limits.weight)
        teams = tuple(Team(spec.name, len(spec.keys), spec.limits) for spec in tenants.tenants)
        self._by_digest, self.teams, self.default = by_digest, teams, tenants.default

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
