"""Reliability: fuzzing the HTTP surface (scenario 8).

Hypothesis sends thousands of malformed and extreme requests to a real server:
valid bodies with fields replaced by arbitrary JSON (wrong types, huge and
tiny numbers, long strings), arbitrary bytes (invalid UTF-8, broken JSON),
deeply nested JSON, bodies over the size limit, odd content types and query
strings, unknown paths and methods. Every answer must be below 500, every
error a problem+json naming its request id, no answer may carry a path, a
traceback or a key, and the server must be healthy afterwards. Slow bodies
(slowloris) are answered 408 once the body deadline passes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.openai.request_types import ChatCompletionRequest, CompletionRequest
from tests.drills import ADMIN_KEY, open_slow_request, read_status
from tests.server import Server, running_server

pytestmark = [
    pytest.mark.timeout(600),
    # Reporting a failing 200 kB body warns about its repr; the failure matters, not that.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

SCALE = int(os.environ.get("TROUPE_FUZZ_SCALE", "1"))
"""``--long`` sets it to 10 (see conftest): ten times the examples."""
API_KEY = "fuzz-api-key"
LEAKS = ("Traceback", 'File "', "/tmp/", "/home/", "/work/", "/root/", API_KEY, ADMIN_KEY)
OUTCOMES: Counter[int] = Counter()
"""Status codes the fuzz run saw (reported as a figure)."""


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    flags = (
        *("--api-keys", API_KEY, "--admin-key", ADMIN_KEY),
        # Valid requests stay cheap, and slow bodies are cut off quickly.
        *("--max-tokens-limit", "4", "--body-timeout", "2", "--max-body-bytes", "65536"),
        # Headers that trickle in are cut off at the keep-alive (75 s by default).
        *("--keep-alive-timeout", "2"),
        *("--audit-path", str(tmp_path_factory.mktemp("fuzz") / "audit.db")),
    )
    with running_server(model_dir, tmp_path_factory.mktemp("fuzz-server"), *flags) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


def check(response: httpx.Response) -> None:
    """What every answer must satisfy, whatever was sent."""
    OUTCOMES[response.status_code] += 1
    assert response.status_code < 500, (response.status_code, response.text[:500])
    for leak in LEAKS:
        assert leak not in response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        body = response.json()
        assert body["status"] == response.status_code
        assert body["request_id"] == response.headers["x-request-id"]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**400])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=64)
    | st.sampled_from(["", "\x00", "\ud7ff" * 3, "a" * 10_000, "{{ raise_exception('x') }}"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def valid_chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@st.composite
def mutated_bodies(draw: st.DrawFn, model: str) -> tuple[str, bytes]:
    """A valid body with some fields replaced by arbitrary JSON, dropped, or added."""
    chat = draw(st.booleans())
    kind = ChatCompletionRequest if chat else CompletionRequest
    body: dict[str, Any] = valid_chat(model) if chat else {"model": model, "prompt": "hi"}
    names = [field.name for field in msgspec.structs.fields(kind)]
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        body[name] = draw(JSON_VALUES)
    if draw(st.booleans()):
        body.pop(draw(st.sampled_from(sorted(body))), None)
    if draw(st.booleans()):
        body[draw(st.text(max_size=16))] = draw(JSON_VALUES)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    try:
        raw = json.dumps(body).encode()
    except ValueError:
        raw = b"{}"
    return path, raw


RAW_BODIES = st.binary(max_size=512) | st.sampled_from(
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"model": "\xff\xfe", "prompt": "\xc3\x28"}',
        b'{"model": "x", "prompt": "' + b"9" * 70_000 + b'"}',
        b"1" * 5000,
        b'{"max_tokens": 1e999999}',
        b"NaN",
    ]
)


@settings(max_examples=800 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_completion_bodies_never_fail_the_server(
    http: httpx.Client, server: Server, data: st.DataObject
) -> None:
    path, raw = data.draw(mutated_bodies(model_name_cached(server)))
    check(http.post(path, content=raw, headers={"content-type": "application/json"}))


@settings(max_examples=500 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/admin/faults"]),
    raw=RAW_BODIES,
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
            "APPLICATION/JSON",
        ]
    ),
)
def test_arbitrary_bytes_never_fail_the_server(
    http: httpx.Client, path: str, raw: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type, "authorization": f"Bearer {ADMIN_KEY}"}
    if path.startswith("/v1/"):
        headers["authorization"] = f"Bearer {API_KEY}"
    check(http.post(path, content=raw, headers=headers))


@settings(max_examples=700 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.sampled_from(
        ["/v1/metrics", "/metrics", "/admin/audit-logs", "/admin/audit-logs/stats", "/v1/models"]
    )
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(
        lambda t: "/" + t
    ),
    query=st.dictionaries(
        st.sampled_from(
            ["format", "category", "limit", "offset", "since", "until", "status", "model"]
        ),
        st.text(max_size=20) | st.integers().map(str),
        max_size=3,
    ),
    request_id=st.text(max_size=200),
)
def test_arbitrary_routes_queries_and_request_ids_never_fail_the_server(
    http: httpx.Client, method: str, path: str, query: dict[str, str], request_id: str
) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY if path.startswith('/admin') else API_KEY}"}
    try:
        headers["x-request-id"] = request_id.encode("latin-1").decode("latin-1")
        response = http.request(method, path, params=query, headers=headers)
    except (UnicodeEncodeError, httpx.InvalidURL, httpx.LocalProtocolError):
        return  # not expressible as an HTTP request
    if method == "HEAD" or response.status_code == 204:
        OUTCOMES[response.status_code] += 1
        assert response.status_code < 500
        return
    check(response)
    if response.status_code < 400:
        assert response.headers["x-request-id"]


def test_a_slow_body_is_answered_408_and_the_server_stays_healthy(
    server: Server, figures: dict[str, object]
) -> None:
    full = json.dumps(valid_chat(model_name_cached(server))).encode()
    slow = open_slow_request(
        server,
        "/v1/chat/completions",
        len(full),
        full[:5],
        extra_headers=f"authorization: Bearer {API_KEY}\r\n",
    )
    start = time.monotonic()
    try:
        assert read_status(slow) == 408
    finally:
        slow.close()
    waited = time.monotonic() - start
    assert waited < 30
    # Headers that never finish are closed at the keep-alive timeout (2 s here).
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as trickle:
        trickle.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        assert trickle.recv(1024) == b""  # closed, not held forever
    assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200
    healthy = httpx.get(server.url + "/health", timeout=10).json()
    assert healthy["status"] == "healthy"
    figures.update(fuzz_requests=sum(OUTCOMES.values()), statuses=dict(sorted(OUTCOMES.items())))


_MODEL: dict[str, str] = {}


def model_name_cached(server: Server) -> str:
    """The served model's id, asked once."""
    if server.url not in _MODEL:
        _MODEL[server.url] = _authed_model(server)
    return _MODEL[server.url]


def _authed_model(server: Server) -> str:
    response = httpx.get(
        server.url + "/v1/models", headers={"authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    name: str = response.json()["data"][0]["id"]
    return name
