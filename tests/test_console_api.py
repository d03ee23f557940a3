"""The console's server side over HTTP: its files, run-time settings, the live audit stream."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.admin.audit_feed import MAX_CLIENTS
from tests.server import Server, running_server
from tests.test_api import assert_problem, model_name
from tests.test_api_metrics import eventually, metrics_text

pytestmark = pytest.mark.timeout(180)

ADMIN_KEY = "console-api-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CONFIG = """# written by hand: this comment must survive a save
chat_timeout = 900  # the chat deadline
"""


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console-api")
    (tmp / "troupe.toml").write_text(CONFIG)
    args = ["--admin-key", ADMIN_KEY, "--audit-path", str(tmp / "audit.sqlite")]
    # Given as a flag too: a saved value is overridden by it at the next start.
    args += ["--config", str(tmp / "troupe.toml"), "--completion-timeout", "600"]
    with running_server(model_dir, tmp, *args) as srv:
        yield srv


def patch(server: Server, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.patch(
        server.url + "/admin/settings", json=body, headers=headers or ADMIN, timeout=30
    )


def chat(server: Server) -> httpx.Response:
    body = {"model": model_name(server), "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        server.url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60
    )


def editable(server: Server) -> dict[str, float]:
    view = httpx.get(server.url + "/admin/settings", headers=ADMIN, timeout=10).json()
    return {name: field["value"] for name, field in view["editable"].items()}


def test_console_files_are_served_without_a_key_under_a_strict_policy(server: Server) -> None:
    page = httpx.get(server.url + "/admin", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    script = httpx.get(server.url + "/admin/static/console.js", timeout=10)
    assert script.status_code == 200 and "sessionStorage" in script.text
    again = httpx.get(
        server.url + "/admin/static/console.js",
        headers={"if-none-match": script.headers["etag"]},
        timeout=10,
    )
    assert again.status_code == 304
    assert_problem(httpx.get(server.url + "/admin/static/other.js", timeout=10), 404)
    # Everything with data needs the key.
    for path in ("/admin/settings", "/admin/supervisor", "/admin/metrics"):
        assert_problem(httpx.get(server.url + path, timeout=10), 401)
    wrong = {"authorization": "Bearer nope"}
    assert_problem(httpx.get(server.url + "/admin/supervisor", headers=wrong, timeout=10), 401)
    assert httpx.get(server.url + "/admin/supervisor", headers=ADMIN, timeout=10).is_success
    settings = httpx.get(server.url + "/admin/settings", headers=ADMIN, timeout=10)
    assert settings.json()["effective"]["audit_log"] == "on"
    assert (
        ADMIN_KEY not in settings.text and "audit.sqlite" not in settings.text
    )  # no secrets, paths


def test_settings_edits_are_checked_like_start_up_and_refused_whole(server: Server) -> None:
    before = editable(server)
    refused = assert_problem(patch(server, {"chat_timeout": 5, "port": 1}), 422)
    assert "`port` cannot change while the server runs" in str(refused["detail"])
    refused = assert_problem(patch(server, {"chat_timeout": 5, "rate_limit_burst": 0}), 422)
    assert "rate_limit_burst" in str(refused["detail"])
    assert_problem(patch(server, {"chat_timeout": -1}), 422)
    assert_problem(patch(server, {"chat_timeout": None}), 422)
    assert_problem(patch(server, {"rate_limit_burst": 1.5}), 422)
    assert_problem(patch(server, {}), 422)
    assert_problem(patch(server, {"persist": True}), 422)
    assert_problem(patch(server, {"chat_timeout": 5}, {"authorization": "Bearer nope"}), 401)
    assert editable(server) == before  # nothing changed, not even the valid half


def test_a_rate_limit_change_takes_effect_and_is_audited(server: Server) -> None:
    changed = patch(server, {"rate_limit_per_second": 0.01, "rate_limit_burst": 1})
    assert changed.status_code == 200, changed.text
    try:
        assert chat(server).status_code == 200
        assert_problem(chat(server), 429)
        info = next(
            line for line in metrics_text(server).splitlines() if "troupe_config_info{" in line
        )
        assert 'rate_limit_burst="1"' in info  # the metric follows the change
    finally:
        assert patch(server, {"rate_limit_per_second": 0}).status_code == 200
    assert chat(server).status_code == 200

    def settings_rows() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = httpx.get(
            server.url + "/admin/audit-logs",
            params={"endpoint": "admin_settings"},
            headers=ADMIN,
            timeout=10,
        ).json()["data"]
        return rows

    # The writer thread commits in batches: the rows arrive soon after.
    eventually(lambda: {row["status"] for row in settings_rows()} >= {200, 422})
    rows = settings_rows()
    assert all(row["key_hash"] for row in rows)  # who: the admin key's tag, never the key
    history = httpx.get(server.url + "/admin/settings", headers=ADMIN, timeout=10).json()
    assert history["changes"][0]["changes"]["rate_limit_per_second"] == [0.01, 0.0]


def test_persisting_writes_the_config_file_and_keeps_its_comments(
    server: Server, tmp_path: Path
) -> None:
    config = Path(_config_path(server))
    saved = patch(server, {"chat_timeout": 450, "completion_timeout": 600, "persist": True})
    assert saved.status_code == 200, saved.text
    text = config.read_text()
    assert "# written by hand: this comment must survive a save" in text
    assert "chat_timeout = 450" in text and "# the chat deadline" in text
    # The flag given at start-up wins over the file next time: the operator is told.
    assert any("completion_timeout" in warning for warning in saved.json()["warnings"])
    assert str(config) not in saved.text  # no path in a response
    assert patch(server, {"chat_timeout": 900, "persist": True}).status_code == 200


def _config_path(server: Server) -> str:
    command = server.process.args
    assert isinstance(command, list)
    return str(command[command.index("--config") + 1])


def _open_stream(
    stack: contextlib.ExitStack, client: httpx.Client, server: Server, query: str = ""
) -> Iterator[str]:
    response = stack.enter_context(
        client.stream("GET", server.url + "/admin/audit-logs/stream" + query, headers=ADMIN)
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    lines = (line for line in response.iter_lines() if line)
    assert next(lines) == ": subscribed"
    return lines


def test_audit_streams_are_bounded_filtered_and_closed_on_shutdown(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ["--admin-key", ADMIN_KEY, "--audit-path", str(tmp_path / "audit.sqlite")]
    with (
        running_server(model_dir, tmp_path, *args) as srv,
        contextlib.ExitStack() as stack,
        httpx.Client(timeout=60) as client,
    ):
        # No config file: nothing to save to, and the server says so.
        assert_problem(patch(srv, {"chat_timeout": 5, "persist": True}), 409)
        streams = [_open_stream(stack, client, srv) for _ in range(MAX_CLIENTS - 1)]
        chats_only = _open_stream(stack, client, srv, "?endpoint=chat")
        extra = client.get(srv.url + "/admin/audit-logs/stream", headers=ADMIN)
        assert_problem(extra, 429)
        request_id = f"stream-{uuid.uuid4().hex}"
        body = {"model": model_name(srv), "prompt": "PRIVATE-PROMPT-TEXT", "max_tokens": 2}
        headers = {"x-request-id": request_id}
        sent = client.post(srv.url + "/v1/completions", json=body, headers=headers)
        assert sent.status_code == 200
        first = streams[0]
        assert next(first) == "event: audit"
        row = next(first)
        assert request_id in row and '"endpoint":"completions"' in row
        assert "PRIVATE-PROMPT-TEXT" not in row  # metadata only
        assert srv.stop() == 0  # does not wait out the drain timeout on open streams
        for lines in streams:
            rest = list(lines)
            assert rest[-2:] == ["event: end", "data: shutdown"], rest[-4:]
        assert list(chats_only) == ["event: end", "data: shutdown"]  # the row was filtered out
