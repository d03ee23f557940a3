"""The command line's side of the settings: one ``--kebab-case`` flag per setting.

:func:`add_arguments` builds the flags from :class:`~api.config.settings.Settings` and
its field docstrings; :func:`overrides_from_args` hands the ones given to
:func:`~api.config.settings.load_settings`, which converts and checks them with every
other source.
"""

from __future__ import annotations

import argparse
from typing import Any, Final, Literal, get_args, get_origin

from api.config.settings import CONFIG_ENV, FIELDS, Settings, env_name, field_docs, flag_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--kebab-case`` flag per setting to ``parser``.

    Every flag defaults to ``None`` so that only the flags given override the
    other sources; values stay strings until :func:`load_settings` converts
    them, which reports a bad one along with every other problem.
    """
    parser.add_argument("--config", metavar="PATH", help=f"a TOML settings file (env {CONFIG_ENV})")
    docs = field_docs()
    for name, field in FIELDS.items():
        doc = docs.get(name, "").replace("``", "").removesuffix(".")
        # An optional setting's docstring already says what unset means.
        default = "" if field.default is None else f"default: {show_default(name)}; "
        text = f"{doc} ({default}env {env_name(name)})"
        help_text = text.replace("%", "%%")  # argparse formats help with %
        if field.type is bool:
            parser.add_argument(
                flag_name(name), action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            metavar = metavar_of(name, field.type)
            parser.add_argument(flag_name(name), metavar=metavar, help=help_text)


def overrides_from_args(ns: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line (flags left out are not included)."""
    values = vars(ns)
    return {name: values[name] for name in FIELDS if values.get(name) is not None}


_METAVARS: Final = {
    "host": "HOST",
    "model": "PATH|FILE.gguf|OWNER/NAME|embedded",
    "models": "FILE.toml",
    "blas": "auto|bundled|PATH",
    "api_keys": "KEY,...",
    "tenants": "FILE.toml",
    "admin_key": "KEY",
    "cors_origins": "ORIGIN,...",
    "shard_hosts": "IP,...",
    "cache_dir": "PATH",
    "audit_path": "PATH",
    "max_body_bytes": "BYTES",
    "cache_max_bytes": "BYTES",
    "memory_budget": "BYTES",
}


def metavar_of(name: str, field_type: Any) -> str:
    """The placeholder for the value of setting ``name`` in help text (``SECONDS``)."""
    if name in _METAVARS:
        return _METAVARS[name]
    if get_origin(field_type) is Literal:
        return "{" + ",".join(get_args(field_type)) + "}"
    if name.endswith(("_timeout", "_period", "_cooldown", "_backoff_max")):
        return "SECONDS"
    # An optional number (``int | None``) takes the number's placeholder.
    present = [arg for arg in get_args(field_type) if arg is not type(None)] or [field_type]
    return {int: "N", float: "X"}.get(present[0], "TEXT") if len(present) == 1 else "TEXT"


def show_default(name: str) -> str:
    """The default of setting ``name`` as help text shows it (lists comma-separated)."""
    value = getattr(Settings(), name)
    if isinstance(value, list):
        return ",".join(value) or "none"
    return str(value)
