"""The OpenAPI description of the console's routes: its files, settings, live audit rows."""

from __future__ import annotations

from typing import Any

from api.admin.console_pages import CONSOLE_PATH, STATIC_PREFIX
from api.admin.live_settings import ENDPOINT_TIMEOUTS, SettingsEdit
from api.openapi.parts import JSON, OBJECT, SSE, Guard, ServedApi, open_operation

_AUDIT_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"enum": ["audit", "end"]},
        "data": {
            "type": "string",
            "description": "A row as JSON; `lagged` or `shutdown` at the end.",
        },
    },
}


def settings_edit_schema() -> dict[str, Any]:
    """``PATCH /admin/settings``'s body, with the start-up checks' ranges."""
    positive = {"type": "number", "exclusiveMinimum": 0}
    properties: dict[str, Any] = {name: positive for name in ENDPOINT_TIMEOUTS}
    properties |= {
        "rate_limit_per_second": {"type": "number", "minimum": 0},
        "rate_limit_burst": {"type": "integer", "minimum": 1},
        "persist": {"type": "boolean"},
    }
    editable = [name for name in SettingsEdit.__struct_fields__ if name != "persist"]
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "anyOf": [{"required": [name]} for name in editable],
    }


def console_paths(
    admin: Guard, served: ServedApi, filters: list[dict[str, Any]], metrics: dict[str, Any]
) -> dict[str, Any]:
    """The console's page and files (no key), and the admin routes its views read."""
    audit_off = () if served.audit_log else (404,)
    files = {
        CONSOLE_PATH: ("The admin console's page.", "text/html"),
        STATIC_PREFIX + "console.js": ("The console's script.", "text/javascript"),
        STATIC_PREFIX + "console.css": ("The console's style.", "text/css"),
    }
    return {
        **{path: {"get": open_operation(summary, kind)} for path, (summary, kind) in files.items()},
        "/admin/supervisor": {
            "get": admin.operation("The supervision tree (the console's).", {JSON: OBJECT}, (503,))
        },
        "/admin/metrics": {"get": metrics},
        "/admin/settings": {
            "get": admin.operation("The effective settings and their changes.", {JSON: OBJECT}, ()),
            "patch": admin.operation(
                "Change deadlines or the rate limit while running (checked, audited).",
                {JSON: OBJECT},
                (400, 408, 409, 413, 415, 422, 500, 503),
                body=settings_edit_schema(),
            ),
        },
        "/admin/audit-logs/stream": {
            "get": admin.operation(
                "New audit rows as server-sent events, until the server stops.",
                {SSE: _AUDIT_EVENT},
                (400, *audit_off, 429, 503),
                parameters=filters,
            )
        },
    }
