"""The tenants file: who shares a server, and as whom (``troupe serve --tenants tenants.toml``).

::

    [tenants.research]          # a tenant: a team whose keys act as one
    keys = ["sk-research-1", "sk-research-2"]

    [tenants.support]
    keys = ["sk-support"]

Every key a tenant lists is accepted on the API, beside ``api_keys``. A key
listed under no tenant is a tenant of its own, named ``key-`` and 12 hex
digits of its digest (never the key). A tenant is the unit of isolation: its
requests reuse each other's cached prompt prefixes, and no other tenant's.
Every mistake is reported with where it is, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
"""A tenant's name: in metric labels, the audit log and ``troupe status``."""
RESERVED_PREFIX = "key-"
"""Names of keys' own tenants; a named tenant cannot take one."""
MAX_TENANTS = 1024
MAX_KEYS = 4096

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class TenantsFileError(ValueError):
    """The tenants file cannot be used; the message says where and why (never a key)."""


class _Tenant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    keys: Annotated[list[Key], msgspec.Meta(min_length=1, max_length=MAX_KEYS)]


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tenants: dict[str, _Tenant]


@dataclass(frozen=True)
class TenantSpec:
    """One named tenant."""

    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class TenantsFile:
    """What a tenants file says: the named tenants, in the file's order."""

    tenants: tuple[TenantSpec, ...]

    def all_keys(self) -> list[str]:
        """Every key a tenant lists."""
        return [key for tenant in self.tenants for key in tenant.keys]


def read_tenants_file(path: str | Path) -> TenantsFile:
    """Read and check a tenants file.

    Raises:
        TenantsFileError: Unreadable, not TOML, a wrong field or name, or a key
            listed twice.
    """
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TenantsFileError(f"the tenants file cannot be read ({exc.strerror})") from None
    return parse_tenants(raw)


def parse_tenants(raw: bytes | str) -> TenantsFile:
    """Check the text of a tenants file (as read from disk or sent to the console)."""
    try:
        parsed = msgspec.toml.decode(raw, type=_File)
    except msgspec.ValidationError as exc:
        # The message names the field, never its value: a key is a secret.
        raise TenantsFileError(f"the tenants file: {_where(exc)}") from None
    except msgspec.DecodeError as exc:
        raise TenantsFileError(f"the tenants file is not valid TOML: {exc}") from None
    return TenantsFile(tuple(_checked(parsed)))


def _checked(parsed: _File) -> list[TenantSpec]:
    if len(parsed.tenants) > MAX_TENANTS:
        raise TenantsFileError(f"the tenants file names more than {MAX_TENANTS} tenants")
    owner: dict[str, str] = {}
    specs: list[TenantSpec] = []
    for name, tenant in parsed.tenants.items():
        if not NAME.fullmatch(name) or name.startswith(RESERVED_PREFIX):
            raise TenantsFileError(
                f"the tenants file: tenants.{name[:60]!r} must be 1-48 letters, digits or"
                f" . _ - (starting with a letter or digit, not {RESERVED_PREFIX!r})"
            )
        for index, key in enumerate(tenant.keys):
            if key != key.strip():
                raise TenantsFileError(
                    f"the tenants file: tenants.{name}.keys[{index}] has spaces around it"
                )
            if key in owner:
                raise TenantsFileError(
                    f"the tenants file: tenants.{name}.keys[{index}] is already a key of"
                    f" tenants.{owner[key]}"
                )
            owner[key] = name
        specs.append(TenantSpec(name, tuple(tenant.keys)))
    return specs


def _where(exc: msgspec.ValidationError) -> str:
    """Msgspec's message with its JSON path turned into TOML's words."""
    message = str(exc)
    return message.replace("`$.", "`").replace("`$`", "the file")
