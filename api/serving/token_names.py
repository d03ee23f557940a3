"""A model's token ids as exact bytes, for log-probabilities in any protocol's shape.

Read from llguidance's view of the tokenizer (a byte-level token may be part
of a UTF-8 character: its bytes are exact where its text would not be).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from actors.generation.engine.constraints import ConstraintError, llg_tokenizer


class TokenNames:
    """Token ids as text and bytes, read once per model."""

    def __init__(self, tokenizer: Callable[[], Any]) -> None:
        self._tokenizer = tokenizer
        self._decode: Callable[[int], bytes] | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Read the tokenizer (about a second for a 50k vocabulary: call it on a thread)."""
        with self._lock:
            if self._decode is not None:
                return
            tokenizer = self._tokenizer()
            try:
                reader = llg_tokenizer(tokenizer)
                self._decode = lambda token: reader.decode_bytes([token])
            except ConstraintError:  # not a fast tokenizer: its own decoding, less exact
                self._decode = lambda token: str(tokenizer.decode([token])).encode()

    def bytes_of(self, token: int) -> bytes:
        """The exact bytes of ``token``."""
        if self._decode is None:
            self.prepare()
        assert self._decode is not None
        return self._decode(token)
