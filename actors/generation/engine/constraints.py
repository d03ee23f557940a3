"""What a constrained request's output must match, as a grammar llguidance runs.

The api turns ``response_format`` (and, later, forced tool calls) into one
grammar text here, checks it before the request is admitted, and sends it in
:class:`SamplingParams`; the engine compiles the same text against the model's
tokenizer and masks every step of that row (:mod:`actors.generation.engine.grammar_mask`).

No MLX here: the api imports this module. Every limit on a grammar's cost is in
:func:`parser_limits`, so what the api accepts is what the engine can compile.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import llguidance

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a stub-only TypedDict

MAX_SCHEMA_BYTES: Final = 64 * 1024
"""Largest JSON Schema accepted (as JSON text)."""
MAX_ERROR_CHARS: Final = 300

# llguidance's fuel is work, not time: about 50k units/ms to build the lexer
# and 14k/ms per mask. These bound one schema's compilation to ~10 ms and one
# token's mask to ~5 ms on this class of CPU, a tenth of llguidance's defaults.
_INITIAL_LEXER_FUEL: Final = 500_000
_STEP_LEXER_FUEL: Final = 70_000
_STEP_MAX_ITEMS: Final = 20_000
_MAX_GRAMMAR_SIZE: Final = 100_000
_MAX_LEXER_STATES: Final = 50_000

# Compact JSON: no whitespace between tokens. Models write it as readily as
# indented JSON, it costs fewer tokens, and a model that would ramble in
# whitespace cannot.
_JSON_OPTIONS: Final[JsonCompileOptions] = {
    "whitespace_flexible": False,
    "lenient": False,
}


class ConstraintError(ValueError):
    """A constraint the server cannot enforce; the message is safe to show the client."""


def parser_limits() -> llguidance.LLParserLimits:
    """The bounds on one grammar's compilation and on each token's mask."""
    return llguidance.LLParserLimits(
        initial_lexer_fuel=_INITIAL_LEXER_FUEL,
        step_lexer_fuel=_STEP_LEXER_FUEL,
        step_max_items=_STEP_MAX_ITEMS,
        max_grammar_size=_MAX_GRAMMAR_SIZE,
        max_lexer_states=_MAX_LEXER_STATES,
        # Errors name the schema's unsupported keyword, not the parser's state.
        verbose_errors=False,
    )


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of JSON documents valid against ``schema`` (checked: see :func:`check`)."""
    text = json.dumps(schema, separators=(",", ":"))
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise ConstraintError(f"the JSON Schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    if "x-guidance" in schema:
        # llguidance reads its options from this key; a client must not change them.
        raise ConstraintError("the JSON Schema keyword `x-guidance` is not supported")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=_JSON_OPTIONS)
    except ValueError:
        raise ConstraintError("the JSON Schema is not a JSON object") from None
    check(grammar)
    return grammar


def json_object_grammar() -> str:
    """The grammar of any JSON object (``response_format: json_object``)."""
    return json_schema_grammar({"type": "object"})


def check(grammar: str) -> None:
    """Raise :class:`ConstraintError` naming what cannot be enforced in ``grammar``."""
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, None, limits=parser_limits()
    )
    if failed:
        raise ConstraintError(_readable(messages[0] if messages else "the grammar is invalid"))


def llg_tokenizer(
    tokenizer: Any, vocab: int | None = None, eos: list[int] | None = None
) -> llguidance.LLTokenizer:
    """The tokenizer as llguidance reads it, from mlx-lm's wrapper of a Hugging Face one.

    Only fast tokenizers (a ``tokenizer.json``) can be read. About a second
    for a 50k vocabulary: build it once, off the event loop.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise ConstraintError("this model's tokenizer does not support constrained decoding")
    return llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab, eos_token=eos)


def _readable(message: str) -> str:
    """The library's message, bounded, with its internal prefixes dropped."""
    message = " ".join(message.split())
    for prefix in ("Grammar error:", "error:"):
        if message.startswith(prefix):
            message = message[len(prefix) :].strip()
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return message
