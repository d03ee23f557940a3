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


@dataclass(frozen=True)
class Tenant:
    """The tenant a request authenticated as."""

    name: str
    """A team's name, or ``key-`` and 12 hex digits of the key's digest."""
    key_digest: str
    """16 hex digits of the key's SHA-256: per-key figures name the key by this."""


def key_digest(key: bytes) -> str:
    """The digest a key is known by in logs, limits and names (never the key)."""
    return hashlib.sha256(key).hexdigest()[:16]


class TenantDirectory:
    """The accepted API keys and the tenant of each."""

    def __init__(self, api_keys: Sequence[str], tenants: TenantsFile | None = None) -> None:
        self._by_digest: dict[bytes, Tenant] = {}
        for key in api_keys:
            self._add(key.encode(), None)
        for spec in tenants.tenants if tenants is not None else ():
            for key in spec.keys:
                self._add(key.encode(), spec.name)

    def _add(self, key: bytes, team: str | None) -> None:
        short = key_digest(key)
        name = team if team is not None else f"{RESERVED_PREFIX}{short[:12]}"
        self._by_digest[hashlib.sha256(key).digest()] = Tenant(name, short)

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
