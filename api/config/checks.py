"""Checks that loaded :class:`~api.config.settings.Settings` make sense, before anything starts.

Every check runs and every problem is returned, so that ``troupe check-config``
(and ``troupe serve`` before it binds) shows the whole list in one go: ranges,
contradictions between settings, the model directory, whether the port is
free, and the versions of MLX and mlx-lm. Nothing here starts a server or
loads a model; the only side effect is a socket bound and closed at once.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from actors.telemetry import choose_tracing
from api.config.diagnostics import ConfigProblem, Severity, error, warning
from api.config.models_file import ModelsFileError, read_models_file
from api.config.settings import EMBEDDED_MODEL, Settings, is_loopback, load_settings
from api.config.tenants_file import TenantsFileError, read_tenants_file

MINIMUM_VERSIONS: Final = {"mlx": (0, 29), "mlx-lm": (0, 28)}
"""Distributions the server needs, with the oldest version that works."""
PRIVILEGED_PORTS: Final = 1024

# (setting, predicate, what the value must be); each is checked on its own.
_RANGES: Final[tuple[tuple[str, Callable[[float], bool], str], ...]] = (
    ("max_body_bytes", lambda v: v >= 1, "at least 1"),
    ("body_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("keep_alive_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("chat_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("completion_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("messages_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("responses_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("embeddings_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("drain_timeout", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("queue_max_requests", lambda v: v >= 1, "at least 1"),
    ("queue_max_prompt_tokens", lambda v: v >= 1, "at least 1"),
    ("max_running", lambda v: v >= 1, "at least 1"),
    ("shards", lambda v: v >= 1, "at least 1"),
    ("engine_hang_timeout", lambda v: 1 <= v < math.inf, "at least 1 second"),
    ("rate_limit_per_second", lambda v: 0 <= v < math.inf, "0 (off) or a positive rate"),
    ("cache_max_entries", lambda v: v >= 1, "at least 1"),
    ("cache_max_bytes", lambda v: v >= 0, "0 or more"),
    ("memory_budget", lambda v: v >= 1, "a positive number of bytes"),
    ("memory_high_water", lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)"),
    ("memory_low_water", lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)"),
    ("audit_retention_days", lambda v: 0 < v < math.inf, "a positive number of days"),
    ("restart_intensity", lambda v: v >= 0, "0 or more"),
    ("restart_period", lambda v: 0 < v < math.inf, "a positive number of seconds"),
    ("restart_backoff_max", lambda v: 0 <= v < math.inf, "0 or more seconds"),
    ("cache_breaker_faults", lambda v: v >= 1, "at least 1"),
    ("cache_breaker_cooldown", lambda v: 0 <= v < math.inf, "0 or more seconds"),
    ("cache_breaker_successes", lambda v: v >= 1, "at least 1"),
    ("replicas", lambda v: v >= 1, "at least 1"),
    ("replica_cpus", lambda v: 0 <= v < math.inf, "0 or more"),
)


def mlx_backends() -> list[str]:
    """MLX's Linux backend distributions that are installed (none on macOS: Metal is built in)."""
    found = []
    for name in ("mlx-cpu", "mlx-cuda-12", "mlx-cuda-13", "mlx-cuda"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_settings(settings: Settings, *, probe_port: bool = True) -> list[ConfigProblem]:
    """Every problem with ``settings``, errors and warnings, in a stable order.

    Args:
        settings: The settings to check.
        probe_port: Also bind ``host:port`` briefly to see whether it is free
            (off where the caller is about to bind it anyway, or in tests).
    """
    problems = [*_check_ranges(settings), *_check_network(settings)]
    if probe_port:
        problems += _probe_port(settings.host, settings.port)
    problems += _check_auth(settings)
    problems += _check_contradictions(settings)
    problems += _check_model(settings)
    problems += _check_dependencies()
    problems += _check_ray(settings)
    return problems


def load_and_check(
    argv_overrides: Mapping[str, object],
    env: Mapping[str, str],
    config_path: str | None = None,
    *,
    probe_port: bool = True,
) -> tuple[Settings, list[ConfigProblem]]:
    """:func:`api.config.settings.load_settings`, then :func:`check_settings` on the result.

    A setting whose value could not be read falls back to another source; the
    checks' remarks about that setting are dropped, since they would be about
    a value the user did not write (``port 8000 is in use`` after ``--port x``).
    """
    settings, problems = load_settings(argv_overrides, env, config_path)
    unreadable = {p.setting for p in problems if p.severity is Severity.ERROR and p.setting}
    checked = check_settings(settings, probe_port=probe_port) + check_tracing(settings, env)
    return settings, problems + [p for p in checked if p.setting not in unreadable]


def check_run_time_change(settings: Settings, changed: frozenset[str]) -> list[ConfigProblem]:
    """The start-up checks' errors about settings in ``changed``, for an edit at run time.

    The ranges and the contradictions between settings are the checks that
    apply to values the console can change; the rest (the port, the model
    file, the dependencies) were checked at start-up and have not changed.
    """
    found = _check_ranges(settings) + _check_contradictions(settings)
    return [p for p in found if p.severity is Severity.ERROR and p.setting in changed]


def check_tracing(settings: Settings, env: Mapping[str, str]) -> list[ConfigProblem]:
    """The tracing settings and the ``OTEL_*`` variables they are read with."""
    choice = choose_tracing(settings.tracing, settings.otlp_endpoint, env)
    return [error("tracing", message) for message in choice.problems]


def _check_ranges(settings: Settings) -> list[ConfigProblem]:
    problems = []
    limit = settings.max_tokens_limit
    if limit is not None and limit < 1:
        problems.append(error("max_tokens_limit", f"must be at least 1, got {limit}"))
    budget = settings.max_batched_tokens
    if budget is not None and budget != 0 and budget <= settings.max_running:
        message = (
            f"must be 0 (no budget) or more than max_running ({settings.max_running}):"
            f" every running sequence decodes each step, got {budget}"
        )
        problems.append(error("max_batched_tokens", message))
    for name, valid, expected in _RANGES:
        value = getattr(settings, name)
        if value is None:  # optional and unset
            continue
        if math.isnan(value) or not valid(value):
            problems.append(error(name, f"must be {expected}, got {value}"))
    return problems


def _check_network(settings: Settings) -> list[ConfigProblem]:
    host, port = settings.host, settings.port
    if not host:
        return [error("host", "is empty; use 0.0.0.0 to listen on every interface")]
    if not 1 <= port <= 65535:
        return [error("port", f"must be between 1 and 65535, got {port}")]
    # Only root (or CAP_NET_BIND_SERVICE) may bind a port below 1024; the
    # capability cannot be read portably, so this warns instead of failing.
    if port < PRIVILEGED_PORTS and hasattr(os, "geteuid") and os.geteuid() != 0:
        message = f"{port} is a privileged port: binding it needs root or CAP_NET_BIND_SERVICE"
        return [warning("port", message)]
    return []


def _probe_port(host: str, port: int) -> list[ConfigProblem]:
    """Bind ``host:port`` as hypercorn would (``SO_REUSEADDR``) and release it."""
    if not host or not 1 <= port <= 65535:
        return []  # already reported by _check_network
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError):
        return [error("host", f"{host!r} does not resolve to an address")]
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # SO_REUSEADDR like the server: a port held only by closed connections
        # (TIME_WAIT) is free to it, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return [_bind_problem(host, port, exc)]
    return []


def _bind_problem(host: str, port: int, exc: OSError) -> ConfigProblem:
    if exc.errno == errno.EADDRINUSE:
        return error("port", f"{port} is already in use on {host!r} (is a server running?)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return error("host", f"{host!r} is not an address of this machine")
    if exc.errno == errno.EACCES:
        return error("port", f"no permission to listen on port {port} of {host!r}")
    return error(
        "port", f"cannot listen on port {port} of {host!r}: {exc.strerror or 'bind failed'}"
    )


def _check_auth(settings: Settings) -> list[ConfigProblem]:
    """Key mistakes; the messages describe keys but never quote them."""
    problems = []
    keys = settings.api_keys
    if any(not key for key in keys):
        problems.append(error("api_keys", "contains an empty key"))
    if len(set(keys)) < len(keys):
        problems.append(warning("api_keys", "lists the same key more than once"))
    if settings.admin_key is not None and settings.admin_key in keys:
        problems.append(
            error("admin_key", "is also one of the api_keys; the admin key must be separate")
        )
    if settings.tenants is not None:
        problems.extend(_check_tenants_file(settings))
    if not keys and settings.tenants is None and not is_loopback(settings.host):
        message = (
            f"none set while listening on {settings.host!r}: anyone reaching it can use the API"
        )
        problems.append(warning("api_keys", message))
    return problems


def _check_tenants_file(settings: Settings) -> list[ConfigProblem]:
    """The tenants file reads, and the admin key is none of its keys."""
    assert settings.tenants is not None
    try:
        tenants = read_tenants_file(settings.tenants)
    except TenantsFileError as exc:
        return [error("tenants", str(exc))]
    if settings.admin_key is not None and settings.admin_key in tenants.all_keys():
        message = "is also a key of the tenants file; the admin key must be separate"
        return [error("admin_key", message)]
    return []


def _check_contradictions(settings: Settings) -> list[ConfigProblem]:
    problems = []
    high, low = settings.memory_high_water, settings.memory_low_water
    if low >= high:
        problems.append(
            error("memory_low_water", f"must be below memory_high_water ({low} >= {high})")
        )
    if settings.rate_limit_burst < 1:
        # Even with the limit off: intake refuses it, and turning the limit on at
        # run time would need it.
        message = (
            f"must be at least 1 (with the rate limit on or off), got {settings.rate_limit_burst}"
        )
        problems.append(error("rate_limit_burst", message))
    problems += _check_faults(settings)
    problems += _check_shards(settings)
    for origin in settings.cors_origins:
        if origin != "*" and not _is_origin(origin):
            message = f"{origin!r} is not an origin: use scheme://host[:port] (no path) or *"
            problems.append(error("cors_origins", message))
    return problems


def _check_shards(settings: Settings) -> list[ConfigProblem]:
    """A split model needs the engine process, and is one model served by one server."""
    if settings.shards == 1:
        if settings.shard_hosts:
            return [error("shard_hosts", "needs shards (--shards N): one process is not split")]
        return []
    problems = _check_shard_hosts(settings)
    if settings.engine != "process":
        problems.append(error("shards", 'needs engine = "process": rank 0 is that process'))
    if settings.models is not None:
        problems.append(error("shards", "splits one model: it cannot be used with models"))
    if settings.ray:
        problems.append(error("shards", "cannot be used with ray yet: a replica is one process"))
    return problems


def _check_shard_hosts(settings: Settings) -> list[ConfigProblem]:
    hosts, size = settings.shard_hosts, settings.shards
    if not hosts:
        return []
    problems = []
    if len(hosts) != size:
        message = f"names {len(hosts)} hosts for {size} shards: one per rank, this machine first"
        problems.append(error("shard_hosts", message))
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            message = f"{host!r} is not an IP address (the ring connects to addresses)"
            problems.append(error("shard_hosts", message))
    if not 1024 <= settings.shard_port <= 65535 - size:
        problems.append(error("shard_port", f"must be 1024 to {65535 - size}"))
    return problems


def _check_faults(settings: Settings) -> list[ConfigProblem]:
    """Fault injection can take the server down: never by accident, never remotely by default."""
    loopback = is_loopback(settings.host)
    if settings.fault_injection and not loopback and not settings.allow_remote_faults:
        message = (
            f"is refused while listening on {settings.host!r}, beyond loopback: anyone "
            "reaching it could crash the server (set allow_remote_faults to insist)"
        )
        return [error("fault_injection", message)]
    if settings.allow_remote_faults and not settings.fault_injection:
        return [warning("allow_remote_faults", "has no effect: fault_injection is off")]
    if settings.allow_remote_faults and loopback:
        message = f"has no effect: {settings.host!r} is loopback, where faults need no permit"
        return [warning("allow_remote_faults", message)]
    return []


def _is_origin(text: str) -> bool:
    """Whether ``text`` is what browsers send in ``Origin`` (so it can ever match)."""
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    plain = not (parts.path or parts.query or parts.fragment or parts.username)
    return parts.scheme in {"http", "https"} and bool(parts.hostname) and plain


def _check_model(settings: Settings) -> list[ConfigProblem]:
    problems = []
    if settings.cache_dir is not None:
        cache = Path(settings.cache_dir).expanduser()
        if cache.exists() and not cache.is_dir():
            problems.append(error("cache_dir", f"{settings.cache_dir!r} is not a directory"))
    if settings.blas not in ("auto", "bundled") and not Path(settings.blas).expanduser().is_file():
        problems.append(error("blas", "must be auto, bundled or the path of a BLAS library"))
    if settings.models is not None:
        return problems + _check_models_file(settings)
    if settings.model in (None, EMBEDDED_MODEL):
        return problems
    if settings.model_size != Settings().model_size:
        message = "is ignored: it sizes the embedded model, and another model is set"
        problems.append(warning("model_size", message))
    try:
        # Imported here: the loader pulls in MLX, which takes a second to load
        # and is needed only when a model is named.
        from actors.model.loader import looks_like_hub_id, validate_model_dir  # noqa: PLC0415
    except ImportError as exc:
        return [*problems, error("model", f"cannot be checked: {exc.name} does not import")]
    path = Path(settings.model).expanduser()
    if not path.exists() and looks_like_hub_id(settings.model):
        message = f"{settings.model!r} is not a local directory: it will come from the Hub"
        return [*problems, warning("model", message)]
    found = validate_model_dir(path)
    return problems + [error("model", f"{settings.model!r}: {problem}") for problem in found]


def _check_models_file(settings: Settings) -> list[ConfigProblem]:
    """The models file reads, and ``model`` is not set beside it."""
    assert settings.models is not None
    problems = []
    if settings.model is not None:
        problems.append(error("model", "cannot be set with models: name every model in the file"))
    if settings.engine == "thread":
        message = "must be process with models: each model runs in an engine process of its own"
        problems.append(error("engine", message))
    try:
        read_models_file(settings.models)
    except ModelsFileError as exc:
        problems.append(error("models", str(exc)))
    return problems


def _check_dependencies() -> list[ConfigProblem]:
    problems = []
    for name, minimum in MINIMUM_VERSIONS.items():
        wanted = ".".join(map(str, minimum))
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(error(None, f"{name} is not installed (needs {name} >= {wanted})"))
            continue
        if version_tuple(installed) < minimum:
            problems.append(
                error(None, f"{name} {installed} is installed; mlx-troupe needs >= {wanted}")
            )
    if sys.platform.startswith("linux") and not mlx_backends():
        message = "MLX has no backend: install mlx-troupe[cpu], [cuda12] or [cuda13]"
        problems.append(error(None, message))
    return problems


def _check_ray(settings: Settings) -> list[ConfigProblem]:
    """Ray's settings mean something only with ``ray`` on, and it needs the ray extra."""
    if not settings.ray:
        given = [
            name
            for name in ("replicas", "ray_address", "replica_cpus", "replica_routing")
            if getattr(settings, name) != getattr(Settings(), name)
        ]
        return [error(name, "needs ray (--ray): without it there is one server") for name in given]
    if importlib.util.find_spec("ray") is None:
        return [error("ray", "Ray is not installed: pip install 'mlx-troupe[ray]'")]
    return []


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"0.29.1rc1"`` -> ``(0, 29, 1)``."""
    release = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in release.group(0).split(".")) if release else ()
