"""Model load failures, worded for operators: one line, no absolute paths, no traceback.

Kept apart from the loaders so that the GGUF converter and the mlx-lm loader
report problems the same way without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from runtime import TroupeError

_MAX_DETAIL: Final = 300
# An absolute path inside a foreign message: a slash not preceded by a word,
# dot, colon or slash (which would make it part of a URL or relative path).
_ABSOLUTE_PATH: Final = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()]*")


class ModelLoadError(TroupeError):
    """A model could not be loaded; ``str()`` lists every problem on one line.

    Attributes:
        model: The model's display name (a directory's last part, or a hub id).
        problems: Each problem found, in the order checked.
    """

    def __init__(self, model: str, problems: Iterable[str]) -> None:
        self.model = model
        self.problems = tuple(problems)
        super().__init__(f"cannot load model {model!r}: {'; '.join(self.problems)}")


def describe_exception(exc: BaseException) -> str:
    """One line about a foreign exception: its message without absolute paths.

    The type name is kept because some messages mean little without it (a
    ``KeyError`` says only the missing key).
    """
    message = " ".join(str(exc).split())
    message = _ABSOLUTE_PATH.sub(_last_component, message)
    if len(message) > _MAX_DETAIL:
        message = message[: _MAX_DETAIL - 3] + "..."
    kind = type(exc).__name__
    return f"{message} ({kind})" if message else kind


def _last_component(match: re.Match[str]) -> str:
    parts = [part for part in match.group(0).split("/") if part]
    return parts[-1] if parts else "/"
