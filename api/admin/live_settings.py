"""Settings an operator may change while the server runs: per-endpoint deadlines, rate limits.

``GET /admin/settings`` shows the effective settings (no secrets, no paths),
which of them can change now, and the changes made so far. ``PATCH
/admin/settings`` changes some: the new values pass the same checks as at
start-up (:func:`api.config.checks.check_run_time_change`) or nothing changes;
a field that cannot change at run time is refused by name. A change takes
effect for the next request (one in flight keeps the deadline it started
with), is audited (a row in the audit log, a ``settings_changed`` log line, the
history shown here) and lasts until the server stops, unless ``"persist":
true`` also writes it to the server's config file (:mod:`api.config.toml_file`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import msgspec

from api.config.checks import check_run_time_change
from api.config.settings import Settings, field_docs
from api.config.toml_file import ConfigFile
from api.http.asgi import Request, Responder, decode_json
from api.http.observe import public_config
from api.http.problems import HTTPProblem

log = logging.getLogger("troupe.settings")

ENDPOINT_TIMEOUTS: Final = {
    "chat_timeout": "chat",
    "completion_timeout": "completions",
    "messages_timeout": "messages",
    "responses_timeout": "responses",
    "embeddings_timeout": "embeddings",
}
"""Each deadline setting and the endpoint it bounds."""
RATE_LIMIT: Final = ("rate_limit_per_second", "rate_limit_burst")
EDITABLE: Final = (*ENDPOINT_TIMEOUTS, *RATE_LIMIT)
"""The settings that can change while the server runs."""
HISTORY: Final = 50
"""Changes the settings view remembers (the audit log keeps them all)."""
MAX_BODY: Final = 4096
"""Largest ``PATCH`` body, bytes: a handful of numbers."""


def endpoint_timeouts(settings: Settings) -> dict[str, float]:
    """Each generating endpoint's deadline, seconds."""
    return {endpoint: getattr(settings, name) for name, endpoint in ENDPOINT_TIMEOUTS.items()}


class SettingsEdit(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``PATCH /admin/settings``: the settings to change, and whether to save them."""

    chat_timeout: float | None = None
    completion_timeout: float | None = None
    messages_timeout: float | None = None
    responses_timeout: float | None = None
    embeddings_timeout: float | None = None
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    persist: bool = False
    """Also write the values to the config file the server was started with."""

    def values(self) -> dict[str, float | int]:
        """The settings this edit names, with their new values."""
        return {name: getattr(self, name) for name in EDITABLE if getattr(self, name) is not None}


class SettingsChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change as the settings view lists it."""

    ts: float
    request_id: str
    changes: dict[str, tuple[float, float]]
    """Setting to ``(old, new)``."""
    persisted: bool


@dataclasses.dataclass(frozen=True)
class SettingsHooks:
    """What a change touches, outside this module."""

    set_timeouts: Callable[[dict[str, float]], None]
    """Give the completions their new per-endpoint deadlines."""
    set_rate_limit: Callable[[float, int], Awaitable[bool]]
    """Tell intake the new rate limit; ``False`` if it did not take it (nothing changed)."""
    config_changed: Callable[[dict[str, str]], None]
    """Tell the metrics actor the effective configuration (``troupe_config_info``)."""
    audit: Callable[[Request, int, float], None]
    """Record the edit (its status and duration, seconds) in the audit log, if there is one."""


class LiveSettings:
    """The effective settings, changed only through :meth:`edit`."""

    def __init__(
        self,
        settings: Settings,
        model_name: str,
        hooks: SettingsHooks,
        config_file: ConfigFile | None = None,
    ) -> None:
        self.current = settings
        self.model_name = model_name
        self.hooks = hooks
        self.config_file = config_file
        self.history: collections.deque[SettingsChange] = collections.deque(maxlen=HISTORY)
        self._one_at_a_time = anyio.Lock()

    def view(self) -> dict[str, Any]:
        """The body of ``GET /admin/settings``."""
        docs = field_docs()
        return {
            "model": self.model_name,
            "effective": public_config(self.current, self.model_name),
            "editable": {
                name: {
                    "value": getattr(self.current, name),
                    "description": docs.get(name, "").replace("``", ""),  # reST, for a page
                }
                for name in EDITABLE
            },
            "can_persist": self.config_file is not None,
            "changes": [msgspec.to_builtins(change) for change in reversed(self.history)],
        }

    async def show(self, request: Request, respond: Responder) -> None:
        """``GET /admin/settings``."""
        await respond.json(200, self.view())

    async def edit(self, request: Request, respond: Responder) -> None:
        """``PATCH /admin/settings``: check, apply, audit; the new view, or a problem."""
        started = time.monotonic()
        status = 500
        try:
            wanted = _read_edit(await request.json_body(dict[str, Any], MAX_BODY))
            async with self._one_at_a_time:  # two consoles' edits never interleave
                warnings = await self._apply(request, wanted)
            status = 200
            await respond.json(200, {**self.view(), "warnings": warnings})
        except HTTPProblem as exc:
            status = exc.problem.status
            raise
        finally:
            self.hooks.audit(request, status, time.monotonic() - started)

    async def _apply(self, request: Request, wanted: SettingsEdit) -> list[str]:
        values = wanted.values()
        candidate = msgspec.structs.replace(self.current, **values)
        problems = check_run_time_change(candidate, frozenset(values))
        if problems:
            detail = "; ".join(f"{p.setting}: {p.message}" for p in problems)
            raise HTTPProblem(422, "invalid-setting", detail)
        warnings: list[str] = []
        if wanted.persist:
            warnings = await self._persist(values)
        changed = {
            name: (getattr(self.current, name), value)
            for name, value in values.items()
            if getattr(self.current, name) != value
        }
        if changed.keys() & set(RATE_LIMIT):
            rate, burst = candidate.rate_limit_per_second, candidate.rate_limit_burst
            if not await self.hooks.set_rate_limit(rate, burst):
                raise HTTPProblem(
                    503,
                    "not-ready",
                    "intake did not take the new rate limit; nothing changed",
                    (("retry-after", "1"),),
                )
        self.current = candidate
        self.hooks.set_timeouts(endpoint_timeouts(candidate))
        self.hooks.config_changed(public_config(candidate, self.model_name))
        self._remember(request, changed, wanted.persist)
        return warnings

    async def _persist(self, values: dict[str, float | int]) -> list[str]:
        if self.config_file is None:
            raise HTTPProblem(
                409,
                "nothing-to-persist-to",
                "this server was started without a config file (--config or TROUPE_CONFIG);"
                " the change can only last until it stops",
            )
        return await anyio.to_thread.run_sync(self.config_file.save, values)

    def _remember(
        self, request: Request, changed: dict[str, tuple[float, float]], persisted: bool
    ) -> None:
        if not changed and not persisted:
            return
        self.history.append(
            SettingsChange(
                ts=time.time(), request_id=request.request_id, changes=changed, persisted=persisted
            )
        )
        # Numbers only: these settings hold no secret and no path.
        described = ", ".join(f"{name} {old:g} -> {new:g}" for name, (old, new) in changed.items())
        log.info(
            "settings changed: %s%s",
            described or "none",
            " (saved to the config file)" if persisted else "",
            extra={
                "event": "settings_changed",
                "settings": sorted(changed),
                "persisted": persisted,
            },
        )


def _read_edit(body: dict[str, Any]) -> SettingsEdit:
    """``body`` as an edit: 422 naming any field that cannot change at run time."""
    fixed = sorted(name for name in body if name not in (*EDITABLE, "persist"))
    if fixed:
        raise HTTPProblem(
            422,
            "not-editable",
            f"{', '.join(f'`{name}`' for name in fixed)} cannot change while the server runs;"
            f" these can: {', '.join(EDITABLE)}",
        )
    if nulls := sorted(name for name, value in body.items() if value is None):
        # An unset deadline would be no deadline: not something to do by accident.
        raise HTTPProblem(422, "invalid-field", f"{', '.join(nulls)}: give a value, not null")
    edit: SettingsEdit = decode_json(msgspec.json.encode(body), SettingsEdit)
    if not edit.values():
        raise HTTPProblem(422, "invalid-field", f"name at least one of: {', '.join(EDITABLE)}")
    return edit
