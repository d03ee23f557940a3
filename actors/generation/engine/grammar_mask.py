"""Grammar-constrained decoding inside the continuous batch.

A constrained request carries one more logits processor: :class:`TokenMask`,
which keeps only the tokens its grammar allows next. mlx-lm's batch generator
runs each row's processors on that row alone, so a constrained row never
leaves the batch and the unconstrained rows beside it are never masked. Once
the grammar is complete, only end-of-sequence is allowed, which ends the
request through the batch's ordinary stop tokens.

Engine thread only (no anyio). Compiled grammars are cached per model
(:class:`GrammarBook`); each request matches on its own copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import llguidance
import mlx.core as mx
import numpy as np

from actors.generation.engine.constraints import ConstraintError, llg_tokenizer, parser_limits

if TYPE_CHECKING:
    from actors.generation.engine.ports import ModelLike

COMPILED_GRAMMARS: Final = 64
"""Grammars kept compiled per model (an agent sends the same few schemas again and again)."""


class GrammarBook:
    """The model's tokenizer as llguidance sees it, and the grammars compiled for it."""

    def __init__(self, loaded: ModelLike, vocab: int, capacity: int = COMPILED_GRAMMARS) -> None:
        self._loaded = loaded
        self._vocab = vocab
        self._capacity = capacity
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # the engine thread, and a test's thread at most

    def matcher(self, grammar: str, consumed: Sequence[int] = ()) -> llguidance.LLMatcher:
        """A fresh matcher for ``grammar`` that has taken in ``consumed`` (a resumed request's)."""
        with self._lock:
            template = self._compiled.get(grammar)
            if template is None:
                template = self._compile(grammar)
            self._compiled.move_to_end(grammar)
            matcher = template.deep_copy()
        if consumed and not matcher.consume_tokens(list(consumed)):
            raise ConstraintError("the resumed tokens do not match the grammar")
        return matcher

    def _compile(self, grammar: str) -> llguidance.LLMatcher:
        tokenizer = self._llg_tokenizer()
        template = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=parser_limits())
        if template.is_error():
            raise ConstraintError(template.get_error()[:300])
        self._compiled[grammar] = template
        while len(self._compiled) > self._capacity:
            self._compiled.popitem(last=False)
        return template

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        # Built on the first constrained request, not at start: it takes about a
        # second for a 50k vocabulary, which would delay every engine restart.
        if self._tokenizer is None:
            self._tokenizer = llg_tokenizer(
                self._loaded.tokenizer, self._vocab, sorted(self._loaded.eos_token_ids)
            )
        return self._tokenizer


class TokenMask:
    """A logits processor that keeps only the tokens the grammar allows next.

    mlx-lm calls it once per generated token with the row's tokens so far: the
    first call's last token is the prompt's, every later call's is the token
    sampled the step before, which the matcher takes in first.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int, eos: Sequence[int]) -> None:
        self._matcher = matcher
        self._vocab = vocab
        self._eos_only = np.zeros(vocab, dtype=bool)
        self._eos_only[[token for token in eos if token < vocab]] = True
        self._started = False

    def __call__(self, tokens: Any, logits: Any) -> Any:
        """``logits`` (one row) with every disallowed token at minus infinity."""
        if self._started:
            # Waits for the previous step's token: this row's mask depends on it.
            self._matcher.consume_token(int(tokens[-1].item()))
        self._started = True
        return mx.where(mx.array(self.allowed()), logits, -mx.inf)

    def allowed(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which token ids may come next (only end-of-sequence once the grammar is done)."""
        if self._matcher.is_error():
            # Cannot happen with tokens drawn under this mask; if it does, the
            # request ends at once rather than running unconstrained.
            return self._eos_only
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self._vocab].astype(bool)
        if not allowed.any():
            return self._eos_only
        return allowed
