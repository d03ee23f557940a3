"""The ``/admin`` routes: the console's files, the audit log, run-time settings, faults.

Everything under ``/admin/`` needs the admin key (:class:`api.http.middleware.AuthMiddleware`),
except the console's page and its static files, which hold no data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from api.admin.audit_log import AuditLog
from api.admin.console_pages import CONSOLE_PATH, serve_console_file, static_paths
from api.admin.fault_switch import FaultSwitch
from api.admin.live_settings import LiveSettings
from api.http.asgi import Request, Responder
from api.http.problems import HTTPProblem
from runtime import ActorSystem

Handler = Callable[[Request, Responder], Awaitable[None]]
SETTINGS_PATH = "/admin/settings"
SETTINGS_ENDPOINT = "admin_settings"
"""The audit log's ``endpoint`` of a settings edit (requests are ``chat``, ``messages`` ...)."""


class AdminRoutes:
    """Handlers for the operator's routes; the app adds them to its own."""

    def __init__(
        self,
        audit: Callable[[], AuditLog | None],
        settings: LiveSettings,
        faults: FaultSwitch,
        system: Callable[[], ActorSystem],
    ) -> None:
        """``audit``: the audit log while the server runs with one."""
        self._audit_log = audit
        self.settings = settings
        self.faults = faults
        self._system = system

    def routes(self) -> dict[str, dict[str, Handler]]:
        """Path to method to handler."""
        console: dict[str, dict[str, Handler]] = {
            path: {"GET": serve_console_file} for path in (CONSOLE_PATH, *static_paths())
        }
        return {
            **console,
            SETTINGS_PATH: {"GET": self.settings.show, "PATCH": self.settings.edit},
            "/admin/audit-logs": {"GET": self.audit_logs},
            "/admin/audit-logs/stats": {"GET": self.audit_stats},
            "/admin/audit-logs/stream": {"GET": self.audit_stream},
            "/admin/faults": {"POST": self.inject_fault, "DELETE": self.clear_faults},
        }

    async def audit_logs(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs``."""
        await self._audit().logs(request, respond)

    async def audit_stats(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs/stats``."""
        await self._audit().stats(request, respond)

    async def audit_stream(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs/stream``: new rows as server-sent events."""
        await self._audit().stream(request, respond)

    def _audit(self) -> AuditLog:
        audit = self._audit_log()
        if audit is None:
            raise HTTPProblem(404, "not-found", "this server keeps no audit log (--audit-path)")
        return audit

    def record_settings_edit(self, request: Request, status: int, duration_s: float) -> None:
        """The audit row of a ``PATCH /admin/settings`` (who, when, how it went)."""
        audit = self._audit_log()
        if audit is None:
            return
        audit.record(
            request,
            model=self.settings.model_name,
            endpoint=SETTINGS_ENDPOINT,
            status=status,
            duration_s=duration_s,
            ttft_s=None,
            prompt_tokens=0,
            completion_tokens=0,
            finish_reason=None,
            error_type=None if status < 400 else "refused",
        )

    def close_streams(self) -> None:
        """End every live audit stream (the server is stopping)."""
        audit = self._audit_log()
        if audit is not None:
            audit.feed.close()

    async def inject_fault(self, request: Request, respond: Responder) -> None:
        """``POST /admin/faults`` (``--fault-injection``)."""
        await self.faults.inject(self._system(), request, respond)

    async def clear_faults(self, request: Request, respond: Responder) -> None:
        """``DELETE /admin/faults`` (``--fault-injection``)."""
        await self.faults.clear(self._system(), request, respond)
