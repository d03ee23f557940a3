"""``GET /openapi.json``: the API this server serves, from the msgspec types that decode it.

The schemas are generated from the same Structs the handlers decode and encode
with (:mod:`api.openai.request_types`, :mod:`api.http.problems`,
:mod:`api.admin.fault_switch`), so the document cannot drift from what the
server accepts. It describes *this* server, not OpenAI's in general
(schemathesis checks the two agree, with every operation fuzzed in the suite):

- ``model`` is the served model's name: any other is answered 404;
- ``max_tokens`` is bounded by the server's limit, token ids by the vocabulary;
- operations carry the security the server enforces (``apiKey`` on ``/v1/``
  when API keys are set, ``adminKey`` on ``/admin/`` when an admin key is set;
  without one, ``/admin/`` answers 403);
- every problem an operation can answer is listed by status, as
  ``application/problem+json`` (Anthropic's error shape, as JSON, on
  ``/v1/messages``); ``/metrics`` is Prometheus text.

Undeclared methods on a route are answered 405 (with ``Allow``), before any
key is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from actors.audit import MAX_QUERY_LIMIT
from actors.metrics.protocol import CATEGORIES
from api.admin.fault_switch import Fault
from api.anthropic.message_types import (
    CountTokensRequest,
    ErrorBody,
    InputTokenCount,
    MessageResponse,
    MessagesRequest,
)
from api.http.asgi import Request, Responder
from api.http.problems import ProblemBody
from api.openai.bodies import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    StreamError,
)
from api.openai.embeddings import EmbeddingList, EmbeddingRequest
from api.openai.request_types import ChatCompletionRequest, CompletionRequest
from api.openai.responses.response_types import INPUT_ITEM_TYPES, Response, ResponsesRequest
from api.openapi.agent_requests import agent_paths, fit_agent_requests
from api.openapi.console_paths import console_paths
from api.openapi.parts import (
    COMPLETION_ERRORS,
    JSON,
    OBJECT,
    REF,
    SSE,
    Guard,
    ServedApi,
    event_stream,
    open_operation,
    query_parameter,
)

__all__ = ["ServedApi", "digits_up_to", "openapi_document"]
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
    MessagesRequest,
    CountTokensRequest,
    MessageResponse,
    InputTokenCount,
    ErrorBody,
    ResponsesRequest,
    Response,
    *INPUT_ITEM_TYPES,
    EmbeddingRequest,
    EmbeddingList,
)
_PROMETHEUS = "text/plain"
_PLAIN_GETS = {
    "/health/live": ("The process is up.", ()),
    "/health/ready": ("Ready to serve (503 otherwise).", (503,)),
    "/health": ("Each actor's health (503 when not ready).", (503,)),
}


class OpenApiRoute:
    """``GET /openapi.json``, built on first request (the model's figures are known by then)."""

    def __init__(self, served: Callable[[], ServedApi]) -> None:
        self._served = served
        self._document: dict[str, Any] | None = None

    async def get(self, request: Request, respond: Responder) -> None:
        """``GET /openapi.json``: the API, generated from the msgspec types."""
        if self._document is None:
            self._document = openapi_document(self._served())
        await respond.json(200, self._document)


def openapi_document(served: ServedApi) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's public and admin routes."""
    refs, components = msgspec.json.schema_components(_SCHEMA_TYPES, ref_template=REF)
    ref = {
        getattr(kind, "__name__", ""): found
        for kind, found in zip(_SCHEMA_TYPES, refs, strict=True)
    }
    chat, text, chat_out, chunk, text_out, models, _, fault, error = refs[:9]
    _fit_requests(components, served)
    fit_agent_requests(components, served)
    schemes: dict[str, Any] = {}
    if served.api_keys:
        schemes["apiKey"] = {"type": "http", "scheme": "bearer"}
    if served.admin_key:
        schemes["adminKey"] = {"type": "http", "scheme": "bearer"}
    api = Guard("apiKey" if served.api_keys else None, ())
    admin = Guard("adminKey" if served.admin_key else None, (403,))
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlx-troupe", "version": served.version},
        "paths": {
            "/v1/chat/completions": {
                "post": api.operation(
                    "Create a chat completion (SSE when `stream` is true).",
                    {JSON: chat_out, SSE: event_stream(chunk, error)},
                    COMPLETION_ERRORS,
                    body=chat,
                )
            },
            "/v1/completions": {
                "post": api.operation(
                    "Create a text completion (SSE when `stream` is true).",
                    {JSON: text_out, SSE: event_stream(text_out, error)},
                    COMPLETION_ERRORS,
                    body=text,
                )
            },
            **agent_paths(api, ref),
            "/v1/models": {"get": api.operation("The served models.", {JSON: models}, ())},
            "/v1/supervisor": {
                "get": api.operation("The supervision tree.", {JSON: OBJECT}, (503,))
            },
            "/v1/metrics": {"get": _v1_metrics(api)},
            **console_paths(admin, served, _audit_filters()[:3], _v1_metrics(admin)),
            "/metrics": {"get": open_operation("Prometheus text exposition.", _PROMETHEUS)},
            **_admin_paths(admin, served, fault),
            **{
                path: {"get": open_operation(summary, JSON, errors)}
                for path, (summary, errors) in _PLAIN_GETS.items()
            },
        },
        "components": {"schemas": components, "securitySchemes": schemes},
    }


_INT64: dict[str, Any] = {"type": "integer", "maximum": 2**63 - 1}
"""A query integer: SQLite's are 64-bit (larger ones are a 400)."""


def _v1_metrics(api: Guard) -> dict[str, Any]:
    categories = ", ".join(CATEGORIES)
    known = f"({'|'.join(CATEGORIES)})"
    return api.operation(
        "Metrics as JSON (or Prometheus text), by category.",
        {JSON: OBJECT, _PROMETHEUS: {"type": "string"}},
        (400, 503),
        parameters=[
            query_parameter(
                "format", {"type": "string", "enum": ["json", "prometheus"]}, "The encoding."
            ),
            query_parameter(
                "category",
                {"type": "string", "pattern": f"^,*({known}(,+{known})*)?,*$"},
                f"Comma-separated categories of {categories}; none: all.",
            ),
        ],
    )


def _audit_filters() -> list[dict[str, Any]]:
    """The audit query's parameters (filters, then the page; the tenant last)."""
    number = {"type": "number"}
    return [
        query_parameter("model", {"type": "string"}, "Only this model's rows."),
        query_parameter("endpoint", {"type": "string"}, "Only this endpoint's rows."),
        query_parameter(
            "status", {**_INT64, "minimum": -(2**63)}, "Only rows with this HTTP status."
        ),
        query_parameter("since", number, "Rows at or after this time (seconds since the epoch)."),
        query_parameter("until", number, "Rows before this time (seconds since the epoch)."),
        query_parameter("limit", {**_INT64, "minimum": 0}, f"Rows at most (≤ {MAX_QUERY_LIMIT})."),
        query_parameter("offset", {**_INT64, "minimum": 0}, "Rows to skip."),
        query_parameter("tenant", {"type": "string"}, "Only this tenant's rows."),
    ]


def _admin_paths(admin: Guard, served: ServedApi, fault: dict[str, Any]) -> dict[str, Any]:
    audit_off = () if served.audit_log else (404,)
    faults_off = () if served.fault_injection else (404,)
    filters = _audit_filters()
    window = filters[3:5]
    return {
        "/admin/audit-logs": {
            "get": admin.operation(
                "Audit rows, newest first.",
                {JSON: OBJECT},
                (400, *audit_off, 503),
                parameters=filters,
            )
        },
        "/admin/audit-logs/stats": {
            "get": admin.operation(
                "Audit statistics per model and endpoint.",
                {JSON: OBJECT},
                (400, *audit_off, 503),
                parameters=window,
            )
        },
        "/admin/tenants": _tenants_operations(admin),
        "/admin/faults": {
            "post": admin.operation(
                "Inject a fault (with --fault-injection).",
                {JSON: OBJECT},
                (400, 408, 409, 413, 415, 422, *faults_off, 503),
                body=fault,
            ),
            "delete": admin.operation(
                "End the lasting drills.", {JSON: OBJECT}, (*faults_off, 503)
            ),
        },
    }


def _tenants_operations(admin: Guard) -> dict[str, Any]:
    """``/admin/tenants``: read every tenant's load; replace the tenants file (TOML text)."""
    replace = admin.operation(
        "Replace the tenants file (keys, teams, limits) at run time.",
        {JSON: OBJECT},
        (408, 413, 415, 422, 503),
    )
    text = {"schema": {"type": "string", "minLength": 1}}
    content = {"application/toml": text, "text/plain": text}
    replace["requestBody"] = {"required": True, "content": content}
    return {
        "get": admin.operation("Each tenant's load and limits.", {JSON: OBJECT}, (503,)),
        "put": replace,
    }


def _fit_requests(components: dict[str, Any], served: ServedApi) -> None:
    """Narrow the request schemas to what this server accepts."""
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        fields = components[name]["properties"]
        fields["model"] = {"type": "string", "enum": served.model_names}
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
