"""Building blocks of the OpenAPI document: operations, their errors, event streams.

:mod:`api.openapi.document` composes the document from these. Nothing here
knows a route: the routes' own descriptions are in :mod:`api.openapi.document`
and :mod:`api.openapi.agent_requests`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.http.problems import TITLES

REF = "#/components/schemas/{name}"
JSON = "application/json"
SSE = "text/event-stream"
COMPLETION_ERRORS = (400, 404, 408, 413, 415, 422, 429, 500, 503, 504)
OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ServedApi:
    """What the document says about this server."""

    version: str
    model: str
    """The served model's name, the only ``model`` a request may name."""
    max_tokens: int
    """Most tokens a request may ask for."""
    vocab_size: int
    """Token ids the model accepts (0: unknown, unbounded in the document)."""
    api_keys: bool
    """``/v1/`` needs an API key."""
    admin_key: bool
    """An admin key is set (else ``/admin/`` answers 403)."""
    audit_log: bool
    """``/admin/audit-logs`` has a log to read (else 404)."""
    fault_injection: bool
    """``/admin/faults`` is on (else 404)."""
    embedding_size: int = 0
    """Dimensions of the model's embeddings (0: unknown, ``dimensions`` unbounded)."""
    models: tuple[str, ...] = ()
    """Every served model's name, when the server serves several (else ``model``)."""

    @property
    def model_names(self) -> list[str]:
        """The names a request's ``model`` may take."""
        return list(self.models) or [self.model]


@dataclass(frozen=True)
class Guard:
    """The security of a group of operations and the problems it adds."""

    scheme: str | None
    """The security scheme enforced, if any (its failure is a 401)."""
    refusals: tuple[int, ...]
    """Statuses answered whatever the request (403 without an admin key)."""
    error_body: dict[str, Any] | None = None
    """The errors' JSON schema where they are not problem+json (Anthropic's routes)."""

    def operation(
        self,
        summary: str,
        success: dict[str, dict[str, Any]],
        errors: tuple[int, ...],
        *,
        body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An operation under this guard: its 200, its errors, its security and body."""
        guarded = (401,) if self.scheme else ()
        operation = operation_of(
            summary, success, (*guarded, *self.refusals, *errors), self.error_body
        )
        operation["security"] = [{self.scheme: []}] if self.scheme else []
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        if parameters:
            operation["parameters"] = parameters
        return operation


def operation_of(
    summary: str,
    success: dict[str, dict[str, Any]],
    errors: tuple[int, ...],
    error_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An operation's summary and responses: its successes and each error status."""
    return {
        "summary": summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {kind: {"schema": schema} for kind, schema in success.items()},
            },
            **{str(status): problem_response(status, error_body) for status in sorted(set(errors))},
        },
    }


def open_operation(summary: str, kind: str, errors: tuple[int, ...] = ()) -> dict[str, Any]:
    """An operation without security (health, Prometheus)."""
    schema = OBJECT if kind == JSON else {"type": "string"}
    return Guard(None, ()).operation(summary, {kind: schema}, (*errors, 503))


def event_stream(chunk: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event of a streamed completion (OpenAPI 3.1: ``schema`` is per event).

    Each event's ``data`` is a chunk as JSON, or an error when the stream fails
    after it started; the last one is ``[DONE]``.
    """
    payload = {"anyOf": [chunk, error]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": JSON, "contentSchema": payload},
                ]
            },
            "event": {"type": "string"},
        },
    }


def problem_response(status: int, error_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The response of an error status: problem+json, or ``error_body`` as JSON."""
    if error_body is not None:
        content = {JSON: {"schema": error_body}}
    else:
        content = {"application/problem+json": {"schema": {"$ref": REF.format(name="ProblemBody")}}}
    return {"description": TITLES.get(status, "Error"), "content": content}


def named_events(payload: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event of Anthropic's or the Responses stream: a name, and JSON data."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": payload},
        },
    }


def query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A query parameter."""
    return {"name": name, "in": "query", "schema": schema, "description": description}
