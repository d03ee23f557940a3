"""A server that answers chat completions at once, and can fail on purpose.

Two uses: ``troupe bench --servers instant`` runs the suite against it to show
how much the load generator can drive when the server costs nothing (each
token is still its own write, as a real server streams them), and the tests
use its faults to check that every failure is counted under the right kind.

A request fails when its body contains ``fault:KIND`` or, with
``fail_every=N``, on every N-th chat request. Kinds: ``http500``, ``http429``
(an error status), ``reset`` (a TCP reset after two tokens), ``close`` (the
connection closed before any answer), ``nodone`` (the stream ends without
``[DONE]``), ``error`` (an error event, then ``[DONE]``), ``hang`` (no answer).

Run alone: ``python -m benchmarks.harness.instant --port 8123``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

FAULTS: Final = ("http500", "http429", "reset", "close", "nodone", "error", "hang")
MODEL_ID: Final = "instant"
TOKEN_EVENT: Final = (
    b'data: {"id":"chatcmpl-instant","object":"chat.completion.chunk","model":"instant",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
)
_MARKER = re.compile(rb"fault:([a-z0-9]+)")
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')


def _frame(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
LAST_FRAME: Final = b"0\r\n\r\n"


class InstantServer:
    """Answers ``POST /v1/chat/completions`` with ``max_tokens`` tokens, no model behind it."""

    def __init__(self, *, fail_every: int = 0, fail_kind: str = "http500") -> None:
        if fail_kind not in FAULTS:
            raise ValueError(f"unknown fault {fail_kind!r}; one of {', '.join(FAULTS)}")
        self.fail_every = fail_every
        self.fail_kind = fail_kind
        self.chat_requests = 0

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Serve connections from ``listener`` until cancelled; close it then."""
        async with listener:
            await listener.serve(self.handle)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        """Answer requests on one connection until the client closes it."""
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                    length = _content_length(head)
                    body = await reader.receive_exactly(length) if length else b""
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.DelimiterNotFound):
                    return
                except (anyio.BrokenResourceError, OSError):
                    return
                if not await self._answer(stream, head, body):
                    return

    async def _answer(self, stream: anyio.abc.SocketStream, head: bytes, body: bytes) -> bool:
        """Answer one request; ``False`` when the connection must end."""
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"GET /health"):
            await stream.send(_plain("200 OK", b'{"status":"ready"}'))
        elif line.startswith(b"GET /v1/models"):
            await stream.send(_plain("200 OK", b'{"data":[{"id":"%s"}]}' % MODEL_ID.encode()))
        elif line.startswith(b"POST ") and b"/chat/completions" in line:
            return await self._chat(stream, body)
        else:
            await stream.send(_plain("404 Not Found", b'{"error":"not found"}'))
        return True

    async def _chat(self, stream: anyio.abc.SocketStream, body: bytes) -> bool:
        self.chat_requests += 1
        fault = self._fault_for(body)
        match = _MAX_TOKENS.search(body)
        tokens = int(match.group(1)) if match else 16
        if fault in ("http500", "http429"):
            status = "500 Internal Server Error" if fault == "http500" else "429 Too Many Requests"
            await stream.send(_plain(status, b'{"error":"injected"}'))
            return True
        if fault == "close":
            return False
        if fault == "hang":
            await anyio.sleep_forever()
        await stream.send(STREAM_HEAD)
        for _ in range(2 if fault == "reset" else tokens):
            await stream.send(_frame(TOKEN_EVENT))
        if fault == "reset":
            _abort(stream)
            return False
        await stream.send(_frame(_ending(tokens, fault)) + LAST_FRAME)
        return True

    def _fault_for(self, body: bytes) -> str | None:
        if marked := _MARKER.search(body):
            return marked.group(1).decode()
        if self.fail_every and self.chat_requests % self.fail_every == 0:
            return self.fail_kind
        return None


def _ending(tokens: int, fault: str | None) -> bytes:
    finish = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":%d}}\n\n' % tokens
    )
    if fault == "nodone":
        return finish
    if fault == "error":
        return b'data: {"error":{"message":"injected","code":500}}\n\ndata: [DONE]\n\n'
    return finish + b"data: [DONE]\n\n"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _abort(stream: anyio.abc.SocketStream) -> None:
    """Make the coming close a TCP reset (RST), as a crashed or overloaded server's."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    # A zero linger time makes the close that follows send RST instead of FIN.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _main(args: argparse.Namespace) -> None:
    server = InstantServer(fail_every=args.fail_every, fail_kind=args.fail_kind)
    listener = await anyio.create_tcp_listener(
        local_host=args.host, local_port=args.port, backlog=1024
    )
    print(f"instant server on http://{args.host}:{args.port}", flush=True)
    await server.serve(listener)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.instant")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-every", type=int, default=0, metavar="N")
    parser.add_argument("--fail-kind", choices=FAULTS, default="http500")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_main, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
