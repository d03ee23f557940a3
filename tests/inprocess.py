"""Serve the real app on real hypercorn inside the test's event loop, actors within reach.

For the tests that must reach into the server while it runs (hold an actor
still with an event, read a counter) and so cannot use a subprocess. The app,
its middleware, the actor tree and the model are built exactly as ``troupe
serve`` builds them; ``adapt`` may swap children of the tree first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import sniffio
from hypercorn.config import Config

from actors.tree import Inference, build_inference
from api.app import TroupeApp, build_asgi
from api.cli.serve import inference_settings, model_loader
from api.config.settings import Settings
from runtime import ChildSpec, SupervisorSpec


@dataclass
class InProcess:
    """A server running in this event loop."""

    url: str
    app: TroupeApp
    inference: Inference


def replace_child(inference: Inference, child: ChildSpec) -> Inference:
    """``inference`` with the tree's child of the same id replaced by ``child``."""
    spec: SupervisorSpec = inference.spec
    children = [
        child if isinstance(c, ChildSpec) and c.id == child.id else c for c in spec.children
    ]
    return dataclasses.replace(inference, spec=dataclasses.replace(spec, children=children))


@asynccontextmanager
async def serving(
    settings: Settings, adapt: Callable[[Inference], Inference] | None = None
) -> AsyncIterator[InProcess]:
    """Start the server on a free loopback port; stop it (drained by hypercorn) on exit."""
    inference = build_inference(model_loader(settings), inference_settings(settings))
    if adapt is not None:
        inference = adapt(inference)
    app = TroupeApp(settings, inference)
    # Bound and listening before hypercorn runs: clients may connect at once and
    # wait in the backlog, so nothing needs to poll for the port.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{os.dup(listener.fileno())}"]  # hypercorn closes the one it gets
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = anyio.Event()
    serve = _hypercorn_serve()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(serve, build_asgi(app), config, shutdown_trigger=stop.wait))
            await app.lifespan.started.wait()
            try:
                yield InProcess(f"http://127.0.0.1:{port}", app, inference)
            finally:
                stop.set()
    finally:
        listener.close()


def _hypercorn_serve() -> Callable[..., Any]:
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve  # noqa: PLC0415 - per backend

        return trio_serve
    from hypercorn.asyncio import serve as asyncio_serve  # noqa: PLC0415 - per backend

    return asyncio_serve
