"""What the engine needs from the outside, as structural types.

The engine depends on these shapes rather than on the model loader or the
kv-cache package, so either can change (or be replaced in a benchmark)
without touching the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class PrefixHitLike(Protocol):
    """A cached prefix handed to the engine: a private copy it may mutate."""

    @property
    def cache(self) -> list[Any]:
        """Per-layer KV caches covering the prefix."""
        ...

    @property
    def length(self) -> int:
        """Prompt tokens the cache covers."""
        ...


class PrefixStore(Protocol):
    """The data plane of the kv-cache actor, called on the engine thread."""

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> PrefixHitLike | None:
        """The longest prefix of ``tokens`` cached in ``namespace`` (leaving one to prefill)."""
        ...

    def insert(self, tokens: Sequence[int], cache: list[Any], namespace: str = "") -> object:
        """Offer the KV state covering ``tokens`` to ``namespace``; the store takes ownership."""
        ...

    def clear(self) -> object:
        """Drop every entry."""
        ...


class ModelLike(Protocol):
    """What the engine needs of a loaded model."""

    @property
    def model(self) -> Any:
        """The MLX model."""
        ...

    @property
    def tokenizer(self) -> Any:
        """mlx-lm's TokenizerWrapper."""
        ...

    @property
    def context_length(self) -> int:
        """Tokens the model attends over, prompt and output together."""
        ...

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end generation."""
        ...
