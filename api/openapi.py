"""``GET /openapi.json``: the API this server serves, from the msgspec types that decode it.

The schemas are generated from the same Structs the handlers decode and encode
with (:mod:`api.openai_types`, :mod:`api.problems`, :mod:`api.faults`), so the
document cannot drift from what the server accepts. It describes *this*
server, not OpenAI's in general (schemathesis checks the two agree, with every
operation fuzzed in the suite):

- ``model`` is the served model's name: any other is answered 404;
- ``max_tokens`` is bounded by the server's limit, token ids by the vocabulary;
- operations carry the security the server enforces (``apiKey`` on ``/v1/``
  when API keys are set, ``adminKey`` on ``/admin/`` when an admin key is set;
  without one, ``/admin/`` answers 403);
- every problem an operation can answer is listed by status, as
  ``application/problem+json``; ``/metrics`` is Prometheus text.

Undeclared methods on a route are answered 405 (with ``Allow``), before any
key is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from actors.audit import MAX_QUERY_LIMIT
from actors.metrics.protocol import CATEGORIES
from api.faults import Fault
from api.openai_responses import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    StreamError,
)
from api.openai_types import ChatCompletionRequest, CompletionRequest
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
    StreamError,
)
_JSON = "application/json"
_PROMETHEUS = "text/plain"
_SSE = "text/event-stream"
_COMPLETION_ERRORS = (400, 404, 408, 413, 415, 422, 429, 500, 503, 504)
_PLAIN_GETS = {
    "/health/live": ("The process is up.", ()),
    "/health/ready": ("Ready to serve (503 otherwise).", (503,)),
    "/health": ("Each actor's health (503 when not ready).", (503,)),
}


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


def openapi_document(served: ServedApi) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's public and admin routes."""
    refs, components = msgspec.json.schema_components(_SCHEMA_TYPES, ref_template=REF)
    chat, text, chat_out, chunk, text_out, models, _, fault, error = refs
    _fit_requests(components, served)
    schemes: dict[str, Any] = {}
    if served.api_keys:
        schemes["apiKey"] = {"type": "http", "scheme": "bearer"}
    if served.admin_key:
        schemes["adminKey"] = {"type": "http", "scheme": "bearer"}
    api = _Guard("apiKey" if served.api_keys else None, ())
    admin = _Guard("adminKey" if served.admin_key else None, (403,))
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlx-troupe", "version": served.version},
        "paths": {
            "/v1/chat/completions": {
                "post": api.operation(
                    "Create a chat completion (SSE when `stream` is true).",
                    {_JSON: chat_out, _SSE: _event_stream(chunk, error)},
                    _COMPLETION_ERRORS,
                    body=chat,
                )
            },
            "/v1/completions": {
                "post": api.operation(
                    "Create a text completion (SSE when `stream` is true).",
                    {_JSON: text_out, _SSE: _event_stream(text_out, error)},
                    _COMPLETION_ERRORS,
                    body=text,
                )
            },
            "/v1/models": {"get": api.operation("The served model.", {_JSON: models}, ())},
            "/v1/supervisor": {
                "get": api.operation("The supervision tree.", {_JSON: _OBJECT}, (503,))
            },
            "/v1/metrics": {"get": _v1_metrics(api)},
            "/metrics": {"get": _open_operation("Prometheus text exposition.", _PROMETHEUS)},
            **_admin_paths(admin, served, fault),
            **{
                path: {"get": _open_operation(summary, _JSON, errors)}
                for path, (summary, errors) in _PLAIN_GETS.items()
            },
        },
        "components": {"schemas": components, "securitySchemes": schemes},
    }


_OBJECT: dict[str, Any] = {"type": "object"}
_INT64: dict[str, Any] = {"type": "integer", "maximum": 2**63 - 1}
"""A query integer: SQLite's are 64-bit (larger ones are a 400)."""


@dataclass(frozen=True)
class _Guard:
    """The security of a group of operations and the problems it adds."""

    scheme: str | None
    """The security scheme enforced, if any (its failure is a 401)."""
    refusals: tuple[int, ...]
    """Statuses answered whatever the request (403 without an admin key)."""

    def operation(
        self,
        summary: str,
        success: dict[str, dict[str, Any]],
        errors: tuple[int, ...],
        *,
        body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        guarded = (401,) if self.scheme else ()
        operation = _operation(summary, success, (*guarded, *self.refusals, *errors))
        operation["security"] = [{self.scheme: []}] if self.scheme else []
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
        if parameters:
            operation["parameters"] = parameters
        return operation


def _operation(
    summary: str, success: dict[str, dict[str, Any]], errors: tuple[int, ...]
) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {kind: {"schema": schema} for kind, schema in success.items()},
            },
            **{str(status): _problem(status) for status in sorted(set(errors))},
        },
    }


def _open_operation(summary: str, kind: str, errors: tuple[int, ...] = ()) -> dict[str, Any]:
    schema = _OBJECT if kind == _JSON else {"type": "string"}
    return _Guard(None, ()).operation(summary, {kind: schema}, (*errors, 503))


def _event_stream(chunk: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
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
                    {"type": "string", "contentMediaType": _JSON, "contentSchema": payload},
                ]
            },
            "event": {"type": "string"},
        },
    }


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": TITLES.get(status, "Error"),
        "content": {
            "application/problem+json": {"schema": {"$ref": REF.format(name="ProblemBody")}}
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _v1_metrics(api: _Guard) -> dict[str, Any]:
    categories = ", ".join(CATEGORIES)
    known = f"({'|'.join(CATEGORIES)})"
    return api.operation(
        "Metrics as JSON (or Prometheus text), by category.",
        {_JSON: _OBJECT, _PROMETHEUS: {"type": "string"}},
        (400, 503),
        parameters=[
            _query("format", {"type": "string", "enum": ["json", "prometheus"]}, "The encoding."),
            _query(
                "category",
                {"type": "string", "pattern": f"^,*({known}(,+{known})*)?,*$"},
                f"Comma-separated categories of {categories}; none: all.",
            ),
        ],
    )


def _admin_paths(admin: _Guard, served: ServedApi, fault: dict[str, Any]) -> dict[str, Any]:
    audit_off = () if served.audit_log else (404,)
    faults_off = () if served.fault_injection else (404,)
    number = {"type": "number"}
    window = [
        _query("since", number, "Rows at or after this time (seconds since the epoch)."),
        _query("until", number, "Rows before this time (seconds since the epoch)."),
    ]
    filters = [
        _query("model", {"type": "string"}, "Only this model's rows."),
        _query("endpoint", {"type": "string"}, "Only this endpoint's rows."),
        _query("status", {**_INT64, "minimum": -(2**63)}, "Only rows with this HTTP status."),
        *window,
        _query("limit", {**_INT64, "minimum": 0}, f"Rows at most (≤ {MAX_QUERY_LIMIT})."),
        _query("offset", {**_INT64, "minimum": 0}, "Rows to skip."),
    ]
    return {
        "/admin/audit-logs": {
            "get": admin.operation(
                "Audit rows, newest first.",
                {_JSON: _OBJECT},
                (400, *audit_off, 503),
                parameters=filters,
            )
        },
        "/admin/audit-logs/stats": {
            "get": admin.operation(
                "Audit statistics per model and endpoint.",
                {_JSON: _OBJECT},
                (400, *audit_off, 503),
                parameters=window,
            )
        },
        "/admin/faults": {
            "post": admin.operation(
                "Inject a fault (with --fault-injection).",
                {_JSON: _OBJECT},
                (400, 408, 409, 413, 415, 422, *faults_off, 503),
                body=fault,
            ),
            "delete": admin.operation(
                "End the lasting drills.", {_JSON: _OBJECT}, (*faults_off, 503)
            ),
        },
    }


def _fit_requests(components: dict[str, Any], served: ServedApi) -> None:
    """Narrow the request schemas to what this server accepts."""
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        fields = components[name]["properties"]
        fields["model"] = {"type": "string", "enum": [served.model]}
        for field in ("max_tokens", "max_completion_tokens"):
            fields[field] = {
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": served.max_tokens},
                    {"type": "null"},
                ]
            }
        if served.vocab_size:
            bias = fields["logit_bias"]["anyOf"][0]
            bias["propertyNames"] = {"pattern": digits_up_to(served.vocab_size - 1)}
    token_id: dict[str, Any] = {"type": "integer", "minimum": 0}
    if served.vocab_size:
        token_id["maximum"] = served.vocab_size - 1
    # msgspec allows one array type in a union; the handler takes exactly these three.
    components["CompletionRequest"]["properties"]["prompt"] = {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": 1,
            },
            {"type": "array", "items": token_id, "minItems": 1},
        ]
    }


def digits_up_to(top: int) -> str:
    """A regular expression for the decimal numbers 0 to ``top``, without leading zeros."""
    digits = str(top)
    width = len(digits)
    patterns = ["[0-9]"] if width > 1 else []
    if width > 2:
        patterns.append(f"[1-9][0-9]{{1,{width - 2}}}")
    patterns.append(digits)
    for i, digit in enumerate(digits):
        low = 1 if i == 0 and width > 1 else 0
        if int(digit) > low:
            rest = width - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            patterns.append(f"{digits[:i]}[{low}-{int(digit) - 1}]{tail}")
    return "^(" + "|".join(patterns) + ")$"
