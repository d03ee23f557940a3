"""Tool-call arguments as RFC 8259 JSON text, numbers as the model wrote them.

Parsers hand back Python values, and Python's ``json`` reads a number too
large for a float (``1e400``, which a grammar's JSON number allows) as
``inf`` and writes it back as ``Infinity``, which is not JSON; it also reads
the ``NaN``/``Infinity`` literals a model may write unconstrained. So
arguments are written with ``allow_nan=False``; where that fails, the
arguments are found again in the call's own text and copied with every
number as written, and if even that fails (a literal that is not JSON) the
call is refused: it stays in the answer as text.
"""

from __future__ import annotations

import json
from typing import Any


class _Number(str):
    """A JSON number as written in the source text."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_EXACT = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_refuse_constant)


def dumps_exact(value: Any) -> str:
    """``value`` as JSON text; numbers read by :data:`_EXACT` are written as they were read."""
    match value:
        case _Number():
            return str(value)
        case str():
            return json.dumps(value, ensure_ascii=False)
        case dict():
            members = (f"{dumps_exact(str(k))}: {dumps_exact(v)}" for k, v in value.items())
            return "{" + ", ".join(members) + "}"
        case list() | tuple():
            return "[" + ", ".join(dumps_exact(item) for item in value) + "]"
        case _:
            return json.dumps(value, allow_nan=False)


def is_json_object(text: str) -> bool:
    """Whether ``text`` is one RFC 8259 JSON object (no ``NaN``/``Infinity``)."""
    try:
        value, end = _EXACT.raw_decode(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and end == len(text.strip())


def arguments_text(arguments: Any, source: str, name: str, occurrence: int) -> str | None:
    """A call's arguments as JSON text, or ``None`` if they cannot be written as JSON.

    ``source`` is the text the call was parsed from; ``occurrence`` counts the
    calls to ``name`` before this one in it.
    """
    if isinstance(arguments, str):
        return arguments if is_json_object(arguments) else None  # text, as the model wrote it
    try:
        return json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except ValueError:
        found = _written_arguments(source, name)
        return dumps_exact(found[occurrence]) if occurrence < len(found) else None


def _written_arguments(source: str, name: str) -> list[Any]:
    """Each ``arguments`` (or Llama's ``parameters``) of a call to ``name`` in ``source``."""
    found: list[Any] = []
    position = 0
    while position < len(source):
        if source[position] not in "{[":
            position += 1
            continue
        try:
            value, end = _EXACT.raw_decode(source, position)
        except ValueError:
            position += 1
            continue
        _collect(value, name, found)
        position = end
    return found


def _collect(value: Any, name: str, found: list[Any]) -> None:
    match value:
        case {"name": str(called), **fields} if called == name and (
            "arguments" in fields or "parameters" in fields
        ):
            found.append(fields.get("arguments", fields.get("parameters")))
        case dict():
            for item in value.values():
                _collect(item, name, found)
        case list():
            for item in value:
                _collect(item, name, found)
