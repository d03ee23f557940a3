"""``/admin/tenants``: every tenant's load and limits, and the tenants file edited at run time.

``GET`` answers intake's per-tenant counters (the busiest tenants) beside
the limits in force; it names tenants, never keys. ``PUT`` takes the whole
tenants file as TOML text, checks it as start-up does (a mistake is a 422
naming where it is, and changes nothing), then applies it: the keys and
teams at once, for every request authenticated from then on, and the limits
and weights in intake. With ``--tenants``, the file on disk is replaced too
(written aside and renamed), so a restart keeps the edit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec

from actors.intake.protocol import TenantLimits
from api.config.tenants_file import TenantsFileError, parse_tenants
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from api.http.tenants import TenantDirectory
from api.serving.intake_client import IntakeClient

MAX_FILE_BYTES = 1024 * 1024
"""The largest tenants file accepted over HTTP."""
TEXT_TYPES = ("application/toml", "text/plain")
"""The body's accepted media types (TOML has no other registered one)."""


class TenantsRoute:
    """The operator's view and edit of the tenants."""

    def __init__(self, directory: TenantDirectory, intake: IntakeClient, path: str | None) -> None:
        """``path``: the tenants file to keep in step with edits (``None``: none was given)."""
        self.directory = directory
        self.intake = intake
        self.path = Path(path).expanduser() if path is not None else None

    async def show(self, request: Request, respond: Responder) -> None:
        """``GET /admin/tenants``."""
        stats = await self.intake.stats()
        if stats is None:
            raise HTTPProblem(503, "not-ready", "intake did not answer", (("retry-after", "1"),))
        await respond.json(200, self._view(stats.tenants))

    async def replace(self, request: Request, respond: Responder) -> None:
        """``PUT /admin/tenants`` with the tenants file's TOML text as the body."""
        kind = (request.header("content-type") or "").partition(";")[0].strip().lower()
        if kind not in TEXT_TYPES:
            raise HTTPProblem(
                415, "unsupported-media-type", "send the tenants file as application/toml"
            )
        raw = await request.body(MAX_FILE_BYTES)
        if not raw.strip():
            # A missing body is a mistake, not "no teams": that is an empty [default].
            raise HTTPProblem(422, "invalid-tenants", "the body is empty: send the tenants file")
        try:
            parsed = parse_tenants(raw)
        except TenantsFileError as exc:
            raise HTTPProblem(422, "invalid-tenants", str(exc)) from None
        stats = await self.intake.set_tenants(parsed.policy())
        if stats is None:
            raise HTTPProblem(503, "not-ready", "intake did not answer", (("retry-after", "1"),))
        self.directory.reload(parsed)
        saved = False
        if self.path is not None:
            await anyio.to_thread.run_sync(_write_aside, self.path, raw)
            saved = True
        await respond.json(200, {**self._view(stats.tenants), "saved": saved})

    def _view(self, rows: list[Any]) -> dict[str, Any]:
        return {
            "tenants": msgspec.to_builtins(rows),
            "named": {
                team.name: {"keys": team.keys, **_limits(team.limits)}
                for team in self.directory.teams
            },
            "default": _limits(self.directory.default),
        }


def _limits(limits: TenantLimits) -> dict[str, Any]:
    return {
        "weight": limits.weight,
        "max_concurrent": limits.max_concurrent,
        "tokens_per_minute": limits.tokens_per_minute,
    }


def _write_aside(path: Path, raw: bytes) -> None:
    """Replace ``path`` with ``raw`` atomically (a crash leaves the old file or the new)."""
    handle, temporary = tempfile.mkstemp(prefix=".tenants-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(raw)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)  # it holds keys
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
