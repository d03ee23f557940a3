"""The message base every actor protocol builds on.

Messages are frozen, tagged msgspec Structs: immutable, cheap to pass within a
process, and encodable with ``msgspec.msgpack`` so an actor can later move to
another process without changing its protocol. The tag (the class name, under
the key ``"type"``) lets unions of messages decode to the right class.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base class of every message exchanged between actors."""


M = TypeVar("M", bound=Message)


_encoder = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    """Encode a message to msgpack bytes."""
    return _encoder.encode(message)


def decode(data: bytes, kind: type[M] | Any) -> M:
    """Decode msgpack bytes into ``kind`` (a message class or a union of them)."""
    result: M = msgspec.msgpack.decode(data, type=kind)
    return result


def message_types() -> list[type[Message]]:
    """Every concrete message class defined so far, base classes excluded.

    A class that has subclasses is treated as an abstract family base.
    """
    found: list[type[Message]] = []
    pending = list(Message.__subclasses__())
    while pending:
        cls = pending.pop()
        children = cls.__subclasses__()
        if children:
            pending.extend(children)
        else:
            found.append(cls)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")
