"""Log-probabilities in OpenAI's shapes: chat's ``content`` list and the legacy one.

The engine reports token ids; a token's text and exact bytes come from
llguidance's reading of the tokenizer (a byte-level token may be part of a
UTF-8 character: its ``bytes`` are exact, its ``token`` text has U+FFFD).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from actors.generation.engine.constraints import ConstraintError, llg_tokenizer
from actors.generation.protocol import TokenLogprob
from api.openai.bodies import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob


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


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob], names: TokenNames) -> ChatLogprobs:
    """``choices[].logprobs`` of a chat completion for ``entries``."""
    content = []
    for entry in entries:
        raw = names.bytes_of(entry.token)
        top = []
        for token, logprob in zip(entry.top_tokens, entry.top_logprobs, strict=True):
            alternative = names.bytes_of(token)
            top.append(
                TopLogprob(token=_text(alternative), logprob=logprob, bytes=list(alternative))
            )
        content.append(
            ChatTokenLogprob(
                token=_text(raw), logprob=entry.logprob, bytes=list(raw), top_logprobs=top
            )
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    entries: Sequence[TokenLogprob], names: TokenNames, offset: int = 0
) -> CompletionLogprobs:
    """``choices[].logprobs`` of a text completion; offsets count from ``offset``."""
    tokens, offsets = [], []
    for entry in entries:
        text = _text(names.bytes_of(entry.token))
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    top = [
        {
            _text(names.bytes_of(token)): logprob
            for token, logprob in zip(entry.top_tokens, entry.top_logprobs, strict=True)
        }
        for entry in entries
    ]
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=top,
        text_offset=offsets,
    )
