"""Log-probabilities in OpenAI's shapes: chat's ``content`` list and the legacy one.

The engine reports token ids; a token's text and exact bytes come from
llguidance's reading of the tokenizer (a byte-level token may be part of a
UTF-8 character: its ``bytes`` are exact, its ``token`` text has U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.generation.protocol import TokenLogprob
from api.openai.bodies import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from api.serving.token_names import TokenNames


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
