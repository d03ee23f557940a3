"""The engine process seen from the server: spawn, frames, exit status.

:class:`EngineProcess` starts ``python -m actors.generation.engine.worker`` with one
end of a Unix socket pair and speaks :mod:`runtime.wire` frames over the other
end with anyio streams. The transport is a socket pair rather than ZeroMQ or
a ``multiprocessing`` pipe: it needs no extra dependency or broker thread, the
kernel reports a dead peer as end of file at once (whatever killed it), anyio
waits on it natively, and one frame per engine step is all the traffic there
is (a shared-memory ring would save nothing measurable at that rate).

The child gets a session of its own, so a Ctrl-C at the terminal reaches only
the server, which then stops the engine in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from actors.generation.engine.process_protocol import Boot, FromEngine
from actors.generation.protocol import EngineExit
from runtime.messages import Message
from runtime.wire import HEADER, FrameDecoder, frame, frame_length

WORKER_MODULE = "actors.generation.engine.worker"
REAP_TIMEOUT = 5.0
"""Seconds to wait for a process that closed its socket to exit before killing it."""


class EngineProcess:
    """One engine child process and the socket to it."""

    def __init__(self, process: anyio.abc.Process, stream: anyio.abc.SocketStream) -> None:
        self._process = process
        self._stream = stream
        self._receive = BufferedByteReceiveStream(stream)
        self._decoder: FrameDecoder[FromEngine] = FrameDecoder(FromEngine)
        self._send_lock = anyio.Lock()
        self._exit: EngineExit | None = None
        self.started_at = time.monotonic()

    @classmethod
    async def spawn(cls) -> EngineProcess:
        """Start a process; it imports MLX and waits for its :class:`Boot`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await anyio.open_process(
                [sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=None,  # native crash reports (an abort's message) reach the log
                stderr=None,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(process, await anyio.abc.UNIXSocketStream.from_socket(ours))

    @property
    def alive(self) -> bool:
        """Whether it has not exited (as far as has been noticed)."""
        return self._process.returncode is None

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    async def send(self, message: Message) -> None:
        """Write one frame (``anyio.BrokenResourceError`` if the process is gone)."""
        data = frame(message)
        async with self._send_lock:
            await self._stream.send(data)

    async def receive(self) -> FromEngine | None:
        """The next frame, or ``None`` at end of file (the process closed or died)."""
        try:
            header = await self._receive.receive_exactly(HEADER.size)
            body = await self._receive.receive_exactly(frame_length(header))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            return None
        return self._decoder.decode(body)

    def kill(self) -> None:
        """SIGKILL (works on a stopped process too)."""
        if self._process.returncode is not None:
            return
        # os.kill, not Popen.kill: that polls first, which reaps the zombie
        # behind asyncio's child watcher, and the exit status would be lost.
        # Until it is reaped the pid stays ours, so this cannot hit another process.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def reap(self, *, at: float | None = None) -> EngineExit:
        """Wait for the exit (killing it after :data:`REAP_TIMEOUT`); how it ended."""
        if self._exit is not None:
            return self._exit
        with anyio.move_on_after(REAP_TIMEOUT):
            await self._process.wait()
        if self._process.returncode is None:
            self.kill()
            await self._process.wait()
        await self.close()
        code = self._process.returncode
        assert code is not None
        self._exit = describe_exit(self.pid, code, at=at)
        return self._exit

    async def close(self) -> None:
        """Close our end of the socket."""
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await self._stream.aclose()


class Spawner:
    """Keeps one engine process started ahead, so that a restart skips its imports.

    A new engine process spends about a second importing MLX and mlx-lm before
    it can load the model; the one kept here has done so already and waits,
    idle, for its :class:`Boot`. It outlives engine-actor incarnations (the
    composition root builds one for all of them) and holds no weights.
    """

    def __init__(self, *, spare: bool = True) -> None:
        self._spare_wanted = spare
        self._spare: EngineProcess | None = None

    async def take(self, boot: Boot) -> EngineProcess:
        """An engine process with ``boot`` sent: the spare if it is alive, else a new one."""
        engine, self._spare = self._spare, None
        if engine is None or not engine.alive:
            if engine is not None:
                await engine.close()
            engine = await EngineProcess.spawn()
        try:
            await engine.send(boot)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            engine.kill()
            await engine.close()
            engine = await EngineProcess.spawn()
            await engine.send(boot)
        return engine

    async def prepare(self) -> None:
        """Start the next spare, if none is waiting (returns once it is started)."""
        if self._spare_wanted and (self._spare is None or not self._spare.alive):
            self._spare = await EngineProcess.spawn()

    async def close(self) -> None:
        """Kill the spare (the server is stopping)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            await spare.reap()


def describe_exit(pid: int, returncode: int, *, at: float | None = None) -> EngineExit:
    """An exit status as people read it (a negative code is the signal's number)."""
    wall = time.time() if at is None else at
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return EngineExit(pid=pid, reason=f"killed by {name}", signal=name, at=wall)
    return EngineExit(pid=pid, reason=f"exited with status {returncode}", code=returncode, at=wall)
