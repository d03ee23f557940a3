"""The tenants file: who shares a server, and as whom (``troupe serve --tenants tenants.toml``).

::

    [default]                   # every tenant not named below: each key of api_keys
    max_concurrent = 8

    [tenants.research]          # a tenant: a team whose keys act as one
    keys = ["sk-research-1", "sk-research-2"]
    weight = 2                  # twice the default's share of the engine while all wait
    max_concurrent = 32         # requests in flight at once
    tokens_per_minute = 200_000 # prompt and max_tokens tokens admitted per minute

    [tenants.support]
    keys = ["sk-support"]

Every key a tenant lists is accepted on the API, beside ``api_keys``. A key
listed under no tenant is a tenant of its own, named ``key-`` and 12 hex
digits of its digest (never the key), with the ``[default]`` limits. A tenant
is the unit of isolation and of fair share: its requests reuse each other's
cached prompt prefixes and no other tenant's, and the engine serves waiting
tenants in proportion to their weights.
Every mistake is reported with where it is, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec

from actors.intake.protocol import TenantLimits, TenantPolicy

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
"""A tenant's name: in metric labels, the audit log and ``troupe status``."""
RESERVED_PREFIX = "key-"
"""Names of keys' own tenants; a named tenant cannot take one."""
MAX_TENANTS = 1024
MAX_KEYS = 4096

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_T = TypeVar("_T")


class TenantsFileError(ValueError):
    """The tenants file cannot be used; the message says where and why (never a key)."""


Weight = Annotated[float, msgspec.Meta(gt=0, le=1000)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    weight: Weight = 1.0
    max_concurrent: Positive | None = None
    tokens_per_minute: Positive | None = None

    def limits(self) -> TenantLimits:
        return TenantLimits(
            weight=self.weight,
            max_concurrent=self.max_concurrent,
            tokens_per_minute=self.tokens_per_minute,
        )


class _Tenant(_Limits, forbid_unknown_fields=True, kw_only=True):
    keys: Annotated[list[Key], msgspec.Meta(min_length=1, max_length=MAX_KEYS)]


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tenants: dict[str, _Tenant] = msgspec.field(default_factory=dict)
    default: _Limits = msgspec.field(default_factory=_Limits)


@dataclass(frozen=True)
class TenantSpec:
    """One named tenant."""

    name: str
    keys: tuple[str, ...]
    limits: TenantLimits = field(default_factory=TenantLimits)


@dataclass(frozen=True)
class TenantsFile:
    """What a tenants file says: the named tenants, in the file's order, and the default."""

    tenants: tuple[TenantSpec, ...]
    default: TenantLimits = field(default_factory=TenantLimits)

    def policy(self) -> TenantPolicy:
        """The limits intake enforces."""
        return TenantPolicy(
            tenants={spec.name: spec.limits for spec in self.tenants}, default=self.default
        )

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
        document = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise TenantsFileError(f"the tenants file is not valid TOML: {exc}") from None
    tenants = document.pop("tenants", {}) if isinstance(document, dict) else {}
    # Each tenant on its own, so that a mistake names its table (msgspec would
    # say ``tenants[...]``); messages name fields, never values: keys are secrets.
    parsed = _File(default=_convert(document, _File, "").default)
    if not isinstance(tenants, dict):
        raise TenantsFileError("the tenants file: `tenants` must be a table of tenants")
    for name, table in tenants.items():
        parsed.tenants[name] = _convert(table, _Tenant, f"tenants.{name}.")
    return TenantsFile(tuple(_checked(parsed)), parsed.default.limits())


def _convert(value: object, kind: type[_T], prefix: str) -> _T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        where = str(exc).replace("`$.", f"`{prefix}").replace("`$`", f"`{prefix.rstrip('.')}`")
        raise TenantsFileError(f"the tenants file: {where}") from None


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
        specs.append(TenantSpec(name, tuple(tenant.keys), tenant.limits()))
    return specs
