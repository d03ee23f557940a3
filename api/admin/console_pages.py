"""The admin console's static files: one page, its script and its style, from the package.

The files hold no data and no secret (everything shown is fetched with the
admin key, which the browser keeps in ``sessionStorage``), so they are served
without a key; a login form asks for it. The policy headers keep the page to
its own origin: no inline script, no third-party code, no framing, and no
``Referer`` leaving it.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Final

from api.http.asgi import Request, Responder

CONSOLE_PATH: Final = "/admin"
STATIC_PREFIX: Final = "/admin/static/"
_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS: Final = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)


def static_paths() -> tuple[str, ...]:
    """The URL of each asset the page loads (the page itself is :data:`CONSOLE_PATH`)."""
    return tuple(STATIC_PREFIX + name for name in _FILES if name != "index.html")


def is_public(path: str) -> bool:
    """Whether ``path`` is one of the console's files, served without the admin key."""
    return path == CONSOLE_PATH or (path.startswith(STATIC_PREFIX) and path in static_paths())


@functools.cache
def _read(name: str) -> tuple[bytes, str]:
    """The file's bytes and its ETag (read once: they ship with the code)."""
    data = resources.files("api.admin").joinpath("console", name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


async def serve_console_file(request: Request, respond: Responder) -> None:
    """``GET /admin`` (the page) or ``GET /admin/static/NAME`` (its script and style)."""
    name = "index.html" if request.path == CONSOLE_PATH else request.path[len(STATIC_PREFIX) :]
    data, etag = _read(name)
    # The page is revalidated every time, so a new server's page is never stale.
    headers = [*SECURITY_HEADERS, ("etag", etag), ("cache-control", "no-cache")]
    if request.header("if-none-match") == etag:
        await respond.start(304, _FILES[name], headers)
        await respond.chunk(b"", more=False)
        return
    await respond.start(200, _FILES[name], headers)
    await respond.chunk(data, more=False)
