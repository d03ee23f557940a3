"""The Ray Serve application: the ingress in front of ``replicas`` model replicas.

Serve's knobs are derived from the server's own settings, so that a replica
admits what one ``troupe serve`` would and the bound on waiting stays the
operator's ``queue_max_requests``:

- ``max_ongoing_requests`` per replica is ``queue_max_requests``: everything one
  server admits (running or waiting for a slot in the batch). Within that, the
  replica's own intake decides: its rate limits, prompt-token bound and memory
  budget answer 429 with Retry-After, as they do without Ray.
- ``max_queued_requests`` is ``queue_max_requests`` too: requests waiting in the
  ingress's router for a replica with room. One more is shed at once with 503
  ``overloaded`` and Retry-After.
- ``graceful_shutdown_timeout_s`` is ``drain_timeout``; the health check is the
  replica's liveness (:meth:`TroupeReplica.check_health`).

``serve run api.replicas.application:app_builder replicas=2 config=troupe.toml``
builds the same application from a Serve config file or the command line
(see ``docs/ray-serve.md``).
"""

from __future__ import annotations

import os
from typing import Any, Final

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from api.config.checks import load_and_check
from api.config.diagnostics import format_problems, has_errors
from api.config.settings import Settings
from api.replicas.deployment import TroupeReplica
from api.replicas.ingress import IngressLimits, TroupeIngress
from api.replicas.router import PrefixAffinityRouter

APP_NAME: Final = "mlx-troupe"
MODEL_DEPLOYMENT: Final = "troupe-model"
INGRESS_DEPLOYMENT: Final = "troupe-ingress"
HEALTH_CHECK_PERIOD: Final = 5.0
"""Seconds between two of Serve's health checks of a replica."""
HEALTH_CHECK_TIMEOUT: Final = 30.0
"""Seconds a health check may take (a replica's event loop is never that busy)."""


def replica_options(settings: Settings) -> dict[str, Any]:
    """The model deployment's Serve options, from the server's settings."""
    options: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "num_replicas": settings.replicas,
        "max_ongoing_requests": settings.queue_max_requests,
        "max_queued_requests": settings.queue_max_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT,
        "graceful_shutdown_timeout_s": settings.drain_timeout,
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
    }
    if settings.replica_routing == "prefix":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=PrefixAffinityRouter  # type: ignore[arg-type]  # a class is taken
        )
    return options


def ingress_options(settings: Settings) -> dict[str, Any]:
    """The ingress's Serve options: it holds every request of every replica, and queues none."""
    return {
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": 1,
        # The model deployment's bounds shed; the ingress must not shed first.
        "max_ongoing_requests": (settings.replicas + 1) * settings.queue_max_requests + 1,
        "ray_actor_options": {"num_cpus": 0},
        "graceful_shutdown_timeout_s": settings.drain_timeout,
    }


def build_application(settings: Settings) -> Application:
    """The ingress bound to the model deployment, both configured from ``settings``."""
    model = serve.deployment(**replica_options(settings))(TroupeReplica).bind(settings)
    limits = IngressLimits(
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    ingress = serve.deployment(**ingress_options(settings))(TroupeIngress)
    return ingress.bind(model, limits)


def app_builder(args: dict[str, object]) -> Application:
    """For ``serve run``: the arguments are settings (``replicas=2``, ``config=FILE``, ...).

    They are read and checked as ``troupe serve`` reads its flags (defaults <
    TOML file < ``TROUPE_*`` environment < these arguments); a problem stops
    the build with every problem listed.
    """
    # YAML gives numbers and booleans; the settings reader takes text, as from flags.
    given = {key.replace("-", "_"): str(value) for key, value in args.items() if key != "config"}
    overrides = {"ray": "true", **given}
    config = args.get("config")
    path = None if config is None else str(config)
    settings, problems = load_and_check(overrides, os.environ, path, probe_port=False)
    if has_errors(problems):
        raise ValueError("the configuration has problems:\n" + format_problems(problems))
    return build_application(settings)
