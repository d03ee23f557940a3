"""The prompt prefix of a request body, as the router's affinity key.

Requests that share a long system prompt (or a conversation's first turns)
should reach the replica whose prefix cache already holds it. The ingress
cannot tokenize (it has no model), so the key is built from the text the
prompt starts with: the model name, then the instructions/system prompt and the
messages in order, cut into fixed blocks of characters and digested as a
chain. Tokens and text are not the same blocks, but text that starts the same
way renders to a prompt that starts the same way, which is all affinity needs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from api.replicas.messages import RouteHint

BLOCK_CHARS = 256
"""Characters per prefix block: about 64 tokens of English."""
MAX_BLOCKS = 32
"""Blocks digested at most (8 KiB of text): a longer shared prefix adds nothing to the choice."""
GENERATION_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}
)

_decoder = msgspec.json.Decoder()


def route_hint(method: str, path: str, body: bytes) -> RouteHint:
    """The hint for one request; empty when it generates nothing or its body is not JSON."""
    if method != "POST" or path not in GENERATION_PATHS:
        return RouteHint()
    try:
        payload = _decoder.decode(body)
    except msgspec.DecodeError:
        return RouteHint()  # the replica answers the error; any replica will do
    if not isinstance(payload, dict):
        return RouteHint()
    return RouteHint(blocks=prefix_blocks(prompt_text(payload)))


def prompt_text(payload: dict[str, Any]) -> str:
    """The text a request's prompt starts with, in the order the model would read it."""
    parts = [str(payload.get("model", ""))]
    for key in ("system", "instructions"):  # Anthropic's system, Responses' instructions
        parts.append(_text(payload.get(key)))
    for key in ("messages", "input", "prompt"):
        value = payload.get(key)
        if isinstance(value, list):
            parts.extend(_message_text(item) for item in value)
        else:
            parts.append(_text(value))
    return "\x1e".join(parts)  # a record separator: "ab"+"c" and "a"+"bc" stay apart


def prefix_blocks(text: str) -> tuple[int, ...]:
    """Chained digests of ``text``'s whole blocks (a last partial block counts too)."""
    digests: list[int] = []
    state = hashlib.blake2b(digest_size=8)
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS), BLOCK_CHARS):
        state.update(text[start : start + BLOCK_CHARS].encode("utf-8", "surrogatepass"))
        digests.append(int.from_bytes(state.copy().digest(), "big") >> 1)  # fits an int64
    return tuple(digests)


def _message_text(message: object) -> str:
    if isinstance(message, dict):
        return f"{message.get('role', '')}:{_text(message.get('content'))}"
    return _text(message)


def _text(value: object) -> str:
    """Text of a string or of a list of content parts; anything else adds nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in value
        )
    return ""
