"""What the ingress and a replica say to each other through Ray Serve.

An HTTP exchange crosses the handle as a :class:`ForwardedRequest` in and a
stream of :class:`ResponseHead` then :class:`ResponseBody` parts out. Each is
a :class:`runtime.Message` (a frozen, tagged msgspec Struct), so it crosses as
data (Ray pickles it; msgpack round-trips it), never as a shared object.
"""

from __future__ import annotations

import msgspec

from api.serving.resumption import ResumeFrom, StreamProgress
from runtime import Message


class ForwardedRequest(Message, frozen=True, kw_only=True):
    """One HTTP request as the ingress received it, body read whole."""

    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None
    resume: ResumeFrom | None = None
    """Set when another replica died under this request's stream: where it stopped."""


class RouteHint(Message, frozen=True, kw_only=True):
    """What the router needs to know of a request: its prompt prefix, as chained block digests.

    ``blocks[i]`` digests the prompt's text up to the end of block ``i``, so two
    prompts share their first ``k`` digests exactly when they share their first
    ``k`` blocks of text. Empty: nothing to keep together (not a generation).
    """

    blocks: tuple[int, ...] = ()


class ResponseHead(Message, frozen=True, kw_only=True):
    """The start of the replica's answer: its status and headers."""

    status: int
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)
    replica: str = ""
    """Which replica answered (its Serve id), for the ``x-troupe-replica`` header."""
    progress: StreamProgress | None = None
    """What a resumable stream reported before this head (its ``created`` time)."""


class ResponseBody(Message, frozen=True, kw_only=True):
    """The next bytes of the body (several ASGI body messages, when they were ready together)."""

    data: bytes
    more: bool = True
    progress: StreamProgress | None = None
    """What a resumable stream reported before these bytes were written: the
    ingress counts it as the client's once it has sent them."""


ResponsePart = ResponseHead | ResponseBody
