"""The engine process's output thread: each step's events leave without stalling the engine.

vLLM's engine core does the same: its busy loop hands outputs to a thread that
serialises them and writes the socket. Here the engine thread only appends a
step's events to a queue, so a parent that reads slowly (its event loop busy
with HTTP work, a client's socket full) delays the delivery of tokens, never
the next decode step. Steps that queued up while a write was under way go out
together, in order, in one frame: a slow reader costs fewer, larger writes.

Plain threads (nothing here imports anyio). Whatever goes wrong in a send ends
the process, as anything else that fails in it does: the parent resumes its
requests from what it was delivered.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from actors.generation.protocol import StreamEvent
from runtime.errors import describe_failure

log = logging.getLogger("troupe.engine")

EXIT_OUTPUT_FAILED = 6
"""The process's exit status when its output thread could not send a step."""

Send = Callable[[list[StreamEvent]], None]


class OutputThread:
    """Sends step outputs from a thread of its own, in the order they were put."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: queue.SimpleQueue[list[StreamEvent] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="troupe-output", daemon=True)
        self.frames = 0
        """Frames sent so far (fewer than the steps put when a slow reader made them queue)."""

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def put(self, events: list[StreamEvent]) -> None:
        """Queue one step's events (any thread; never blocks)."""
        self._queue.put(events)

    def close(self, timeout: float) -> bool:
        """Send what is queued, then end the thread; ``True`` once it has ended."""
        self._queue.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        ending = False
        while not ending:
            first = self._queue.get()
            if first is None:
                return
            events, ending = self._with_queued(first)
            try:
                self._send(events)
            except Exception as exc:  # a bug here must not leave the parent waiting forever
                log.error("the engine's output thread failed: %s", describe_failure(exc))
                os._exit(EXIT_OUTPUT_FAILED)
            self.frames += 1

    def _with_queued(self, first: list[StreamEvent]) -> tuple[list[StreamEvent], bool]:
        """``first`` and every step queued behind it; ``True`` if the end was queued too."""
        events = list(first)
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return events, False
            if more is None:
                return events, True
            events.extend(more)
