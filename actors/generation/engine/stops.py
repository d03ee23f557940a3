"""Stop strings over streamed text, never emitted even across token boundaries.

Text arrives in pieces (one detokenized segment per token). A stop string may
straddle pieces, so the matcher holds back the longest tail that could still
become a stop string and releases it only once it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Releases text up to (never including) the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None
        """The stop string that ended the text, once one has."""

    def feed(self, text: str) -> str:
        """Add ``text``; return what is now safe to emit."""
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = _earliest(buffer, self._stops)
        # A longer stop may start before the match found, and complete later:
        # hold everything from where it would start until that is decided.
        pending = self._pending_start(buffer, len(buffer) if cut is None else cut)
        if pending is not None:
            self._held = buffer[pending:]
            return buffer[:pending]
        self._held = ""
        if cut is not None:
            return self._stop(buffer, cut)
        return buffer

    def flush(self) -> str:
        """At the end of generation: release what was held back, up to any stop in it."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = _earliest(held, self._stops)
        if cut is not None:
            return self._stop(held, cut)
        return held

    def _stop(self, buffer: str, cut: int) -> str:
        """End the text at ``cut``, remembering which stop string begins there."""
        self.stopped = True
        self.matched = min(
            (stop for stop in self._stops if buffer.startswith(stop, cut)), key=len, default=None
        )
        return buffer[:cut]

    def _pending_start(self, buffer: str, before: int) -> int | None:
        """The first index before ``before`` where an unfinished stop string may begin."""
        if not self._stops:
            return None
        longest = max(len(stop) for stop in self._stops)
        for start in range(max(0, len(buffer) - longest + 1), min(before, len(buffer))):
            tail = buffer[start:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self._stops):
                return start
        return None


def _earliest(buffer: str, stops: Sequence[str]) -> int | None:
    found = [index for stop in stops if (index := buffer.find(stop)) >= 0]
    return min(found) if found else None
