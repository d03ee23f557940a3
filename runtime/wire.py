"""Messages between processes: length-prefixed msgpack frames over a byte stream.

Each frame is a 4-byte big-endian length and one message encoded with
``msgspec.msgpack``. The engine process and its parent exchange frames over a
Unix socket pair; a frame always holds a whole message, so a peer that dies
mid-write leaves a short frame, which is never decoded: a reader
(:meth:`BlockingChannel.receive`, or an async one built on :func:`frame_length`
and :class:`FrameDecoder`) decodes only a frame it has read whole.

Plain Python, no event loop: the engine process uses it with blocking
sockets, the parent with anyio streams.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any, Final, Generic, TypeVar

import msgspec

from runtime.messages import Message

HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 256 * 1024 * 1024
"""Bytes one frame may hold; a longer length means the stream is corrupt."""

M = TypeVar("M")


class FrameError(ValueError):
    """The byte stream does not hold valid frames (a corrupt or foreign peer)."""


_encoder = msgspec.msgpack.Encoder()


def frame(message: Message) -> bytes:
    """``message`` as one frame: its length, then its msgpack encoding."""
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise FrameError(f"a {type(message).__name__} of {len(body)} bytes exceeds one frame")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a frame header announces (checked against :data:`MAX_FRAME`)."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"a frame announces {length} bytes, more than {MAX_FRAME}")
    return int(length)


class FrameDecoder(Generic[M]):
    """Decodes frame bodies into ``kind`` (a message class or a tagged union)."""

    def __init__(self, kind: Any) -> None:
        self._decoder: msgspec.msgpack.Decoder[M] = msgspec.msgpack.Decoder(kind)

    def decode(self, body: bytes) -> M:
        """One message; :class:`FrameError` if it is not one of ``kind``."""
        try:
            return self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise FrameError(f"an undecodable frame: {exc}") from None


class BlockingChannel(Generic[M]):
    """Frames over a blocking socket: ``send`` from any thread, ``receive`` from one."""

    def __init__(self, sock: socket.socket, kind: Any) -> None:
        self._sock = sock
        self._decoder: FrameDecoder[M] = FrameDecoder(kind)
        self._send_lock = threading.Lock()

    def send(self, message: Message) -> None:
        """Write one whole frame (threads never interleave their frames)."""
        data = frame(message)
        with self._send_lock:
            self._sock.sendall(data)

    def receive(self) -> M | None:
        """The next message, or ``None`` once the peer has closed the stream."""
        header = self._read_exactly(HEADER.size)
        if header is None:
            return None
        body = self._read_exactly(frame_length(header))
        if body is None:
            return None
        return self._decoder.decode(body)

    def _read_exactly(self, size: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(min(size - len(chunks), 1 << 20))
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        """Close the socket (a blocked ``receive`` in another thread then returns)."""
        with contextlib.suppress(OSError):  # already shut down by the peer
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
