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

    def feed(self, text: str) -> str:
        """Add ``text``; return what is now safe to emit."""
        if self.stopped:
            return ""
        buffer = self._held + text
        if not self._stops:
            self._held = ""
            return buffer
        cut = _earliest(buffer, self._stops)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._held_back(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation: release what was held back (it was no stop)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _held_back(self, buffer: str) -> int:
        """Length of the longest tail of ``buffer`` that starts some stop string."""
        longest = min(len(buffer), max(len(stop) for stop in self._stops) - 1)
        for size in range(longest, 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0


def _earliest(buffer: str, stops: Sequence[str]) -> int | None:
    found = [index for stop in stops if (index := buffer.find(stop)) >= 0]
    return min(found) if found else None
