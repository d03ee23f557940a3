"""A Hugging Face Hub stand-in on loopback, serving one model directory as a repository.

It answers what ``huggingface_hub.snapshot_download`` asks (repository info,
the file tree, each file's metadata and bytes) and can be told to fail: the
next N requests of a kind answer 503, or a kind always fails. Point a process
at it with ``HF_ENDPOINT`` (read when huggingface_hub is imported, so set it in
a child process's environment).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubScript:
    """What the fake hub serves and how it misbehaves."""

    repo: str
    files: dict[str, bytes]
    fail_next: Counter[str] = field(default_factory=Counter)
    """Kind (``revision``, ``file``) -> requests still to answer 503."""
    always_fail: set[str] = field(default_factory=set)
    """File names whose bytes always answer 500."""
    seen: Counter[str] = field(default_factory=Counter)
    """Requests by kind."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, kind: str) -> bool:
        with self.lock:
            self.seen[kind] += 1
            if self.fail_next[kind] > 0:
                self.fail_next[kind] -= 1
                return True
            return False


def _handler(script: HubScript) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/api/agent-harnesses":
                self._send(200, b'{"standardEnvVars": [], "harnesses": {}}')
            elif path.startswith("/api/models/"):
                self._api(path.removeprefix("/api/models/"))
            elif "/resolve/" in path:
                repo, rest = path.lstrip("/").split("/resolve/", 1)
                self._file(repo, rest.split("/", 1)[1])
            else:
                self._send(404, b"{}")

        do_HEAD = do_GET

        def _api(self, rest: str) -> None:
            repo = "/".join(rest.split("/")[:2])
            if repo != script.repo:
                script.should_fail("missing")
                self._send(
                    404, b'{"error": "Repository not found"}', ("x-error-code", "RepoNotFound")
                )
            elif "/tree/" in rest:
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                    for name, data in script.files.items()
                ]
                self._send(200, json.dumps(tree).encode())
            elif script.should_fail("revision"):
                self._send(503, b'{"error": "busy"}')
            else:
                siblings = [{"rfilename": name} for name in script.files]
                info = {"id": repo, "sha": COMMIT, "siblings": siblings}
                self._send(200, json.dumps(info).encode())

        def _file(self, repo: str, name: str) -> None:
            data = script.files.get(name)
            if repo != script.repo or data is None:
                self._send(404, b"{}", ("x-error-code", "EntryNotFound"))
                return
            if self.command == "GET" and name in script.always_fail:
                self._send(500, b'{"error": "broken"}')
                return
            etag = ("etag", f'"{_oid(data)}"')
            self._send(200, data, etag, ("x-repo-commit", COMMIT))

        def _send(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@contextmanager
def fake_hub(script: HubScript) -> Iterator[str]:
    """Serve ``script`` on a free loopback port; yields the endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def repo_of(model_dir: Path, repo: str) -> HubScript:
    """A script serving every file of ``model_dir`` as repository ``repo``."""
    files = {f.name: f.read_bytes() for f in sorted(model_dir.iterdir()) if f.is_file()}
    return HubScript(repo=repo, files=files)
