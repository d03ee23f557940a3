"""The admin console in a real browser: Debian's headless Chromium, driven by Playwright.

One server (admin key, audit log) and one browser serve the module; each test
opens its own browser context, so no session storage carries over. Set
``TROUPE_CONSOLE_SCREENSHOTS=docs/console`` to refresh the committed screenshots.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, running_server
from tests.test_api import model_name

pytestmark = pytest.mark.timeout(180)

ADMIN_KEY = "console-admin-key"
WAIT_MS = 30_000
"""How long a browser-side wait may take (a live row arrives in milliseconds)."""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):  # CI installs it (.ci/run): missing there is a failure
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console")
    args = ["--admin-key", ADMIN_KEY, "--audit-path", str(tmp / "audit.sqlite")]
    with running_server(model_dir, tmp, *args) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    try:
        opened = context.new_page()
        opened.goto(server.url + "/admin")
        yield opened
    finally:
        context.close()


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    """A screenshot of the view (into the docs when asked to refresh them)."""
    folder = Path(os.environ.get("TROUPE_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def log_in(page: Any, key: str = ADMIN_KEY) -> None:
    page.fill("#admin-key", key)
    page.click("#login-form button[type=submit]")


def chat(server: Server, request_id: str, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": model_name(server),
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        # Never an end-of-text token: it runs to max_tokens.
        "logit_bias": {str(token): -100 for token in range(7)},
    }
    headers = {"x-request-id": request_id}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_a_wrong_key_is_refused_and_not_kept(page: Any, tmp_path: Path) -> None:
    log_in(page, "not-the-key")
    page.wait_for_selector("#login-error:has-text('refused')")
    assert page.is_hidden("#app-view")
    assert page.evaluate("sessionStorage.length") == 0
    assert "not-the-key" not in page.url
    shoot(page, "login-refused", tmp_path)


def test_log_in_and_see_the_live_supervision_tree(page: Any, tmp_path: Path) -> None:
    log_in(page)
    page.wait_for_selector('#tree li[data-name="intake"][data-state="running"]')
    page.wait_for_selector('#tree li[data-name="generation"][data-state="running"]')
    page.wait_for_selector("#breaker-state:has-text('closed')")
    # The engine process, with its pid and heartbeat.
    page.wait_for_selector("#engine-process dt:has-text('heartbeat')")
    assert page.evaluate("sessionStorage.getItem('troupe-admin-key')") == ADMIN_KEY
    assert ADMIN_KEY not in page.url
    # It refreshes itself (no wait_for_function: the page's policy forbids eval).
    page.wait_for_selector("#tree[data-refreshes='2']")
    shoot(page, "overview", tmp_path)


def test_a_new_request_appears_in_the_audit_log_without_a_reload(
    page: Any, server: Server, tmp_path: Path
) -> None:
    log_in(page)
    page.click("nav [data-view=audit]")
    page.wait_for_selector("#live-state[data-state=on]")  # subscribed: no row can be missed
    page.evaluate("window.notReloaded = true")
    request_id = f"console-{uuid.uuid4().hex}"
    assert chat(server, request_id).status_code == 200
    row = page.wait_for_selector(f'tr[data-request-id="{request_id}"]')
    cells = [cell.text_content() for cell in row.query_selector_all("td")]
    assert cells[3:5] == ["chat", "200"]
    assert page.evaluate("window.notReloaded") is True
    shoot(page, "audit-log", tmp_path)


def test_a_deadline_changed_in_the_console_holds_for_the_next_request(
    page: Any, server: Server, tmp_path: Path
) -> None:
    log_in(page)
    page.click("nav [data-view=settings]")
    page.wait_for_selector("#setting-chat_timeout")
    page.fill("#setting-chat_timeout", "-1")  # refused by the start-up checks
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-message:has-text('must be a positive number of seconds')")
    page.fill("#setting-chat_timeout", "0.001")
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-message:has-text('Applied.')")
    page.wait_for_selector("#settings-history li:has-text('chat_timeout 900')")
    try:
        response = chat(server, f"console-{uuid.uuid4().hex}", max_tokens=200)
        assert response.status_code == 504, response.text
        shoot(page, "settings", tmp_path)
    finally:
        page.fill("#setting-chat_timeout", "900")
        page.click("#settings-form button[type=submit]")
        page.wait_for_selector("#settings-history li:has-text('chat_timeout 0.001')")
    assert chat(server, f"console-{uuid.uuid4().hex}").status_code == 200


def test_the_charts_follow_the_metrics_windows(page: Any, server: Server, tmp_path: Path) -> None:
    for _ in range(3):
        assert chat(server, f"console-{uuid.uuid4().hex}").status_code == 200
    log_in(page)
    page.click("nav [data-view=charts]")
    page.wait_for_selector("#view-charts[data-points='2']")
    latest = page.evaluate("state.history[state.history.length - 1]")
    assert latest["ttft95"] is not None and latest["ttft95"] > 0
    assert latest["rss"] is not None and latest["rss"] > 0
    shoot(page, "charts", tmp_path)


def test_tenants_replaced_in_the_console_hold_for_the_next_request(
    page: Any, server: Server, tmp_path: Path
) -> None:
    body = {"model": model_name(server), "prompt": "hi", "max_tokens": 1}
    log_in(page)
    page.click("nav [data-view=settings]")
    page.wait_for_selector('#tenant-teams tr[data-tenant="[default]"]')
    page.fill("#tenants-file", "[tenants.research]\nkeys = [1]\n")
    page.click("#tenants-form button[type=submit]")
    page.wait_for_selector("#tenants-message:has-text('Not changed: ')")
    assert "tenants.research.keys" in (page.text_content("#tenants-message") or "")
    team_key = f"console-team-{uuid.uuid4().hex}"
    page.fill(
        "#tenants-file",
        f'[default]\nmax_concurrent = 4\n\n[tenants.research]\nkeys = ["{team_key}"]\n'
        "weight = 2.0\ntokens_per_minute = 60000\n",
    )
    page.click("#tenants-form button[type=submit]")
    page.wait_for_selector('#tenant-teams tr[data-tenant="research"] td:has-text("60000")')
    try:
        assert page.input_value("#tenants-file") == ""  # the key is not left on screen
        assert team_key not in page.content()
        shoot(page, "tenants", tmp_path)
        url = server.url + "/v1/completions"
        member = httpx.post(url, json=body, headers={"authorization": f"Bearer {team_key}"})
        assert member.status_code == 200, member.text
        assert httpx.post(url, json=body).status_code == 401  # keys are on now
    finally:
        page.fill("#tenants-file", "[default]\n")
        page.click("#tenants-form button[type=submit]")
        page.wait_for_selector('#tenant-teams tr[data-tenant="research"]', state="detached")
    assert chat(server, f"console-{uuid.uuid4().hex}").status_code == 200
