"""Saving settings changed at run time into the TOML file the server was started with.

tomlkit edits the document in place, so the operator's comments, order and
layout survive; the new text is read back with :mod:`tomllib` before it
replaces the file, and it replaces it atomically (a temporary file in the
same directory, then ``os.replace``), so a failed save leaves the old file
whole. Paths and OS error texts never reach a response: they name files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from api.config.settings import CONFIG_ENV, ENV_PREFIX
from api.http.problems import HTTPProblem

log = logging.getLogger("troupe.settings")


class ConfigFile:
    """The server's ``--config`` file, and the settings given elsewhere that win over it."""

    def __init__(self, path: str | Path, shadowed: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.shadowed = frozenset(shadowed)
        """Settings also set by a flag or a ``TROUPE_*`` variable, which win over the file."""

    @classmethod
    def of(
        cls, config_path: str | None, env: Mapping[str, str], flags: Iterable[str]
    ) -> ConfigFile | None:
        """The file ``troupe serve`` read (``--config``, else ``$TROUPE_CONFIG``), if any."""
        path = config_path or env.get(CONFIG_ENV) or None
        if path is None:
            return None
        from_env = {name[len(ENV_PREFIX) :].lower() for name in env if name.startswith(ENV_PREFIX)}
        return cls(path, from_env | set(flags))

    def save(self, values: Mapping[str, float | int]) -> list[str]:
        """Write ``values`` into the file; warnings about the ones a flag or variable overrides.

        Raises:
            HTTPProblem: 500 when the file cannot be read, parsed or replaced.
        """
        try:
            self._replace(_edited(self.path.read_text(encoding="utf-8"), values))
        except (OSError, ValueError, tomlkit.exceptions.TOMLKitError) as exc:
            log.error("could not save settings to the config file: %s", type(exc).__name__)
            raise HTTPProblem(
                500, "config-not-saved", "the config file could not be updated; nothing changed"
            ) from None
        log.info("settings saved to the config file: %s", ", ".join(sorted(values)))
        return [
            f"{name} is also set by a flag or TROUPE_{name.upper()}, which wins over the config"
            " file when the server starts again"
            for name in sorted(values.keys() & self.shadowed)
        ]

    def _replace(self, text: str) -> None:
        """Put ``text`` in place of the file, all at once or not at all."""
        handle, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(OSError):  # keep the file's permissions
                os.chmod(temporary, self.path.stat().st_mode & 0o7777)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _edited(text: str, values: Mapping[str, float | int]) -> str:
    """``text`` with ``values`` set at its top level, its comments and layout kept."""
    document = tomlkit.parse(text)
    for name, value in values.items():
        document[name] = value
    edited = tomlkit.dumps(document)
    read_back = tomllib.loads(edited)
    if any(read_back.get(name) != value for name, value in values.items()):
        raise ValueError("the edited file does not read back as written")
    return edited
