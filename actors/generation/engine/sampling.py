"""Per-request samplers and logits processors for mlx-lm's batch generator.

Each request gets its own sampler. A seeded request draws from its own MLX
random key, split once per token, so its tokens do not depend on which other
requests share the batch or on the global MLX seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from actors.generation.protocol import MAX_TOP_LOGPROBS, SamplingParams

Sampler = Callable[[Any], Any]
LogitsProcessor = Callable[[Any, Any], Any]


class RequestSampler:
    """Temperature, top-k, top-p and min-p sampling with an optional private seed."""

    def __init__(self, params: SamplingParams, *, skip: int = 0) -> None:
        """``skip``: draws already made for this request (by an engine that died)."""
        self._temperature = params.temperature
        self._filters: list[Callable[[Any], Any]] = []
        if params.top_k > 0:
            top_k = params.top_k
            # A k as large as the vocabulary keeps every token; mlx-lm's top-k
            # would index past the end (a client could crash the engine with it).
            self._filters.append(lambda x: x if top_k >= x.shape[-1] else apply_top_k(x, top_k))
        if 0.0 < params.top_p < 1.0:
            top_p = params.top_p
            self._filters.append(lambda x: apply_top_p(x, top_p))
        if params.min_p > 0.0:
            min_p = params.min_p
            self._filters.append(lambda x: apply_min_p(x, min_p))
        # MLX keys take an unsigned 64-bit seed; OpenAI's seeds are signed.
        # Wrapping keeps every seed distinct and reproducible (and a negative
        # one from raising inside the engine).
        seed = None if params.seed is None else params.seed % 2**64
        self._key: Any = None if seed is None else mx.random.key(seed)
        if self._key is not None:
            for _ in range(skip):  # where the previous engine's key stream had got to
                self._key, _ = mx.random.split(self._key)

    def __call__(self, logprobs: Any) -> Any:
        """Pick one token per row of ``logprobs``."""
        if self._temperature == 0.0:
            return mx.argmax(logprobs, axis=-1)
        for keep in self._filters:
            logprobs = keep(logprobs)
        scaled = logprobs * (1.0 / self._temperature)
        if self._key is None:
            return mx.random.categorical(scaled)
        self._key, draw = mx.random.split(self._key)
        return mx.random.categorical(scaled, key=draw)


def logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """Logit bias and the repetition, presence and frequency penalties."""
    processors: list[LogitsProcessor] = make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
        repetition_context_size=params.penalty_window,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=params.penalty_window,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=params.penalty_window,
    )
    return processors


def validate(params: SamplingParams, vocab_size: int) -> list[str]:
    """Every problem with ``params``, for a clear rejection before any MLX work."""
    problems: list[str] = []
    if params.max_tokens < 1:
        problems.append("max_tokens must be at least 1")
    if not 0.0 <= params.temperature <= 100.0:
        problems.append("temperature must be between 0 and 100")
    if not 0.0 < params.top_p <= 1.0:
        problems.append("top_p must be in (0, 1]")
    if params.top_k < 0:
        problems.append("top_k must not be negative")
    if not 0.0 <= params.min_p <= 1.0:
        problems.append("min_p must be between 0 and 1")
    if params.repetition_penalty <= 0.0:
        problems.append("repetition_penalty must be positive")
    if not -2.0 <= params.presence_penalty <= 2.0:
        problems.append("presence_penalty must be between -2 and 2")
    if not -2.0 <= params.frequency_penalty <= 2.0:
        problems.append("frequency_penalty must be between -2 and 2")
    if params.penalty_window < 1:
        problems.append("penalty_window must be at least 1")
    problems.extend(_bias_problems(params, vocab_size))
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_TOP_LOGPROBS:
        problems.append(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if len(params.stop) > 16:
        problems.append("at most 16 stop strings")
    return problems


def _bias_problems(params: SamplingParams, vocab_size: int) -> list[str]:
    problems = []
    if any(not 0 <= token < vocab_size for token in params.logit_bias):
        problems.append(f"logit_bias keys must be token ids below {vocab_size}")
    if any(not -100.0 <= bias <= 100.0 for bias in params.logit_bias.values()):
        problems.append("logit_bias values must be between -100 and 100")
    return problems
