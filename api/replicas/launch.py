"""``troupe serve --ray``: the same server, as Ray Serve replicas behind one port.

Joins the cluster at ``ray_address`` (or starts a local one), starts Serve's
HTTP proxy on the configured host and port, deploys
:func:`~api.replicas.application.build_application` and waits for SIGTERM or
SIGINT. Then Serve drains the replicas (each up to ``drain_timeout``), the
application is deleted, and a Ray started here is stopped with it: exit 0. A
deployment that cannot start (every replica's constructor failed) exits 1.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Final

import ray
from ray import serve

from api.config.model_choice import served_name
from api.config.settings import Settings
from api.replicas.application import APP_NAME, build_application

log = logging.getLogger("troupe.server")

EXIT_START_FAILED: Final = 1


def serve_on_ray(settings: Settings) -> int:
    """Run the replicas until a signal; the exit status."""
    ray.init(address=settings.ray_address, include_dashboard=False)
    # After ray.init, which installs handlers of its own that would end the
    # process at once, without draining the replicas or stopping the cluster.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:
            log.error("cannot start: %s", _first_line(exc), extra={"event": "server_start_failed"})
            return EXIT_START_FAILED
        _announce(settings)
        stop.wait()
        log.info("draining the replicas", extra={"event": "server_draining"})
        serve.shutdown()  # type: ignore[no-untyped-call]
        return 0
    finally:
        ray.shutdown()


def _announce(settings: Settings) -> None:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    name = served_name(settings)
    print(f"mlx-troupe: serving {name} on {url} ({settings.replicas} replicas on Ray Serve)")
    sys.stdout.flush()
    log.info(
        "serving",
        extra={"event": "server_started", "model": name, "url": url, "replicas": settings.replicas},
    )


def _first_line(exc: BaseException) -> str:
    """One line of Serve's report, which may quote a replica's traceback."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
