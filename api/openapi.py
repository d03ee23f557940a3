"""``GET /openapi.json``: the API described from the msgspec types that decode it.

The schemas are generated from the same Structs the handlers decode and encode
with (:mod:`api.openai_types`, :mod:`api.problems`, :mod:`api.faults`), so the
document cannot drift from what the server accepts. Every operation lists its
problem responses (``application/problem+json``) by status.
"""

from __future__ import annotations

from typing import Any

import msgspec

from api.faults import Fault
from api.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelList,
)
from api.problems import TITLES, ProblemBody

REF = "#/components/schemas/{name}"
_SCHEMA_TYPES: tuple[Any, ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    ProblemBody,
    Fault,
)
_COMPLETION_ERRORS = (400, 401, 404, 408, 413, 415, 422, 429, 503, 504)


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's public and admin routes."""
    refs, components = msgspec.json.schema_components(_SCHEMA_TYPES, ref_template=REF)
    chat, text, chat_out, chunk, text_out, models, _, fault = refs
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlx-troupe", "version": version},
        "paths": {
            "/v1/chat/completions": {
                "post": _operation(
                    "Create a chat completion (SSE when `stream` is true).",
                    chat,
                    {"application/json": chat_out, "text/event-stream": chunk},
                    _COMPLETION_ERRORS,
                )
            },
            "/v1/completions": {
                "post": _operation(
                    "Create a text completion (SSE when `stream` is true).",
                    text,
                    {"application/json": text_out, "text/event-stream": chunk},
                    _COMPLETION_ERRORS,
                )
            },
            "/v1/models": {"get": _operation("The served model.", None, {_JSON: models}, (401,))},
            "/admin/faults": {
                "post": _operation(
                    "Inject a fault (with --fault-injection).",
                    fault,
                    {_JSON: {"type": "object"}},
                    (400, 401, 403, 404, 409, 415, 422),
                ),
                "delete": _operation(
                    "End the lasting drills.", None, {_JSON: {"type": "object"}}, (401, 403, 404)
                ),
            },
            **{path: {"get": _plain(summary)} for path, summary in _PLAIN_GETS.items()},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_JSON = "application/json"
_PLAIN_GETS = {
    "/health/live": "The process is up.",
    "/health/ready": "Ready to serve (503 otherwise).",
    "/health": "Each actor's health.",
    "/v1/supervisor": "The supervision tree.",
    "/v1/metrics": "Metrics as JSON (or Prometheus text), by category.",
    "/metrics": "Prometheus text exposition.",
    "/admin/audit-logs": "Audit rows (admin key).",
    "/admin/audit-logs/stats": "Audit statistics (admin key).",
}


def _operation(
    summary: str,
    body: dict[str, Any] | None,
    success: dict[str, dict[str, Any]],
    errors: tuple[int, ...],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {kind: {"schema": schema} for kind, schema in success.items()},
            },
            **{str(status): _problem(status) for status in errors},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    return operation


def _plain(summary: str) -> dict[str, Any]:
    return _operation(summary, None, {_JSON: {"type": "object"}}, (401, 405, 503))


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": TITLES.get(status, "Error"),
        "content": {
            "application/problem+json": {"schema": {"$ref": REF.format(name="ProblemBody")}}
        },
    }
