"""Reliability: keys and request ids (scenario 9).

With API keys on, every ``/v1`` route and every admin route refuses missing
and wrong keys with 401 (compared in constant time, against every key), health
stays open, the admin key is separate from the API keys, and request ids from
clients are checked (length, characters) before they reach a log line.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.tree import build_inference
from api.app import TroupeApp
from api.config.settings import Settings
from api.http.asgi import ASGIMessage, Scope
from api.http.middleware import AuthMiddleware
from api.http.problems import HTTPProblem
from api.openapi.document import ServedApi, openapi_document
from tests.server import Server, running_server

pytestmark = pytest.mark.timeout(120)

API_KEYS = ("sec-key-one", "sec-key-two")
ADMIN = "sec-admin-key"
OPEN = ("/health", "/health/live", "/health/ready", "/openapi.json", "/metrics")
CONSOLE_FILES = ("/admin", "/admin/static/console.js", "/admin/static/console.css")
"""Routes that answer without a key: probes, the API's description, the scrape target,
and the console's page and files (which hold no data: its views fetch with the key)."""


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("security")
    flags = ("--api-keys", ",".join(API_KEYS), "--admin-key", ADMIN, "--fault-injection")
    with running_server(model_dir, tmp, *flags, "--audit-path", str(tmp / "a.db")) as running:
        yield running


def routes() -> dict[str, dict[str, Any]]:
    """Every route the app serves, with its methods (the app's own table)."""
    app = TroupeApp(Settings(), build_inference(_never_loaded))
    return {path: dict(methods) for path, methods in app.routes.items()}


def _never_loaded() -> Any:
    raise AssertionError("the route table needs no model")


def test_the_openapi_document_describes_every_route() -> None:
    served_api = ServedApi("test", "m", 64, 1024, True, True, True, True)
    document = openapi_document(served_api)
    served = {path: {m.lower() for m in methods} for path, methods in routes().items()}
    described = {path: set(operations) for path, operations in document["paths"].items()}
    assert described == {
        path: methods for path, methods in served.items() if path != "/openapi.json"
    }
    text = str(document)
    for name in ("ChatCompletionRequest", "CompletionRequest", "ProblemBody", "EngineCrash"):
        assert name in document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"], ref
    assert "$defs" not in text


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_guarded_route_refuses_missing_and_wrong_keys(server: Server) -> None:
    guarded = [path for path in routes() if path not in (*OPEN, *CONSOLE_FILES)]
    assert {p for p in guarded if p.startswith("/admin/")} >= {"/admin/faults"}
    assert all(p.startswith(("/v1/", "/admin/")) for p in guarded)
    for path, methods in routes().items():
        for method in methods:
            tries = {
                "missing": {},
                "wrong": {"authorization": "Bearer not-a-key"},
                "not bearer": {"authorization": f"Basic {API_KEYS[0]}"},
                "the other kind": _bearer(API_KEYS[0] if path.startswith("/admin/") else ADMIN),
                "wrong x-api-key": {"x-api-key": "not-a-key"},
                # x-api-key is Anthropic's header for API keys, never the admin key's.
                "x-api-key elsewhere": {"x-api-key": ADMIN if path.startswith("/admin/") else ""},
            }
            for label, headers in tries.items():
                response = httpx.request(method, server.url + path, headers=headers, timeout=30)
                if path in (*OPEN, *CONSOLE_FILES):
                    assert response.status_code != 401, (path, label)
                    continue
                assert response.status_code == 401, (method, path, label, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                if path.startswith("/v1/messages"):  # Anthropic's routes, Anthropic's shape
                    assert response.headers["content-type"] == "application/json"
                    assert response.json()["error"]["type"] == "authentication_error"
                else:
                    assert response.headers["content-type"] == "application/problem+json"
    assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200


def test_the_right_keys_open_their_own_routes_only(server: Server) -> None:
    for key in API_KEYS:
        models = httpx.get(server.url + "/v1/models", headers=_bearer(key), timeout=10)
        assert models.status_code == 200
        anthropic_style = httpx.get(
            server.url + "/v1/models", headers={"x-api-key": key}, timeout=10
        )
        assert anthropic_style.status_code == 200
    audit = httpx.get(server.url + "/admin/audit-logs", headers=_bearer(ADMIN), timeout=10)
    assert audit.status_code == 200
    assert (
        httpx.get(server.url + "/v1/models", headers=_bearer(ADMIN), timeout=10).status_code == 401
    )
    log = server.log()
    for secret in (*API_KEYS, ADMIN):
        assert secret not in log


def test_request_ids_are_checked_before_they_reach_a_log_line(server: Server) -> None:
    hostile = {
        "too long": "r" * 129,
        "newline": "abc\\ninjected=1",
        "spaces and quotes": 'a b"c',
        "escape": "\x1b[31mred",
        "non-ascii": "idé",
    }
    for label, given in hostile.items():
        response = httpx.get(
            server.url + "/v1/nowhere",
            headers=[
                (b"authorization", f"Bearer {API_KEYS[0]}".encode()),
                (b"x-request-id", given.encode()),
            ],
            timeout=10,
        )
        assert response.status_code == 404
        replaced = response.headers["x-request-id"]
        assert replaced != given and len(replaced) == 32, label
        assert response.json()["request_id"] == replaced
    log = server.log()
    assert "r" * 129 not in log and "injected=1" not in log and "\x1b[31m" not in log
    good = httpx.get(
        server.url + "/v1/nowhere",
        headers={**_bearer(API_KEYS[0]), "x-request-id": "client-id_1.2:3"},
        timeout=10,
    )
    assert good.headers["x-request-id"] == "client-id_1.2:3"


async def test_api_keys_are_looked_up_by_digest_never_compared_byte_by_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How long a guess takes says nothing about how much of it matched a key.

    API keys are found by their SHA-256, so no comparison runs over a key's
    bytes (which could stop at the first difference), and the directory holds
    no key itself.
    """
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("api.http.middleware.hmac.compare_digest", counting)
    reached: list[tuple[str, str]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        reached.append((scope["path"], scope["state"]["tenant"]))

    guard = AuthMiddleware(app, list(API_KEYS), ADMIN)
    held = repr(vars(guard.directory))
    assert not any(key in held for key in API_KEYS)
    for presented in (API_KEYS[0], API_KEYS[1], API_KEYS[0][:-1], "wrong"):
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/v1/models",
            "headers": [(b"authorization", f"Bearer {presented}".encode())],
        }
        if presented in API_KEYS:
            await guard(scope, _no_receive, _no_send)
        else:
            with pytest.raises(HTTPProblem) as refused:
                await guard(scope, _no_receive, _no_send)
            assert refused.value.problem.status == 401
    assert compared == []
    tenants = [tenant for _, tenant in reached]
    assert len(reached) == 2 and len(set(tenants)) == 2
    assert all(tenant.startswith("key-") and len(tenant) == 16 for tenant in tenants)


async def _no_receive() -> ASGIMessage:
    raise AssertionError("no body is read")


async def _no_send(message: ASGIMessage) -> None:
    raise AssertionError("nothing is sent")


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
