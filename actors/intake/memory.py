"""Memory-aware admission: would this request's KV cache fit what the budget has left?

Every admitted request will hold a KV cache of about ``bytes per token x
(prompt + max_tokens)`` per choice until it ends. The engine reports the
model's bytes per token and what the weights and the prefix cache take
(:class:`~actors.intake.protocol.ReportMemory`); intake books each request's
tokens and refuses one whose cache would not fit the rest of the budget, with
429 and a ``Retry-After`` from the drain rate, before any prefill. That is an
estimate made at admission, not a reading polled every few seconds: a burst of
long requests is refused at once instead of after the memory is gone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryBook:
    """The budget, what the engine last reported, and the KV tokens booked."""

    budget: int | None
    """Bytes for weights, prefix cache and every admitted request's KV cache; ``None``: off."""
    kv_bytes_per_token: int = 0
    """The served model's KV cache bytes per token (0 until the engine reports it)."""
    model_bytes: int = 0
    """Bytes the weights and the prefix cache take, as last reported."""
    booked_tokens: int = 0
    """KV tokens of the requests in flight (choices x prompt, plus their max_tokens)."""

    def report(self, kv_bytes_per_token: int, model_bytes: int) -> None:
        """Take the engine's latest figures."""
        self.kv_bytes_per_token = max(0, kv_bytes_per_token)
        self.model_bytes = max(0, model_bytes)

    @property
    def active(self) -> bool:
        """Whether admission checks memory (a budget, and the engine's figures)."""
        return self.budget is not None and self.kv_bytes_per_token > 0

    @property
    def left(self) -> int | None:
        """Bytes the budget has left for KV caches after the weights and the prefix cache."""
        if self.budget is None or not self.active:
            return None
        return self.budget - self.model_bytes

    def refusal(self, tokens: int, others_in_flight: int) -> str | None:
        """Why ``tokens`` more KV tokens do not fit, or ``None`` if they do.

        A request is not refused when nothing else is in flight: the estimate
        errs high (max_tokens is a ceiling), and the prefix cache gives way
        under pressure, so refusing it would turn it away forever.
        """
        left = self.left
        if left is None or not others_in_flight:
            return None
        need = tokens * self.kv_bytes_per_token
        booked = self.booked_tokens * self.kv_bytes_per_token
        if booked + need <= left:
            return None
        return (
            f"about {_mib(need)} of KV cache would pass the memory budget: {_mib(booked)} "
            f"booked by {others_in_flight} requests, {_mib(max(0, left))} left after the "
            "weights and the prefix cache"
        )


def kv_tokens(prompt_tokens: int, max_tokens: int, choices: int) -> int:
    """KV tokens a request holds at most: each choice's prompt, plus every completion token."""
    return max(1, choices) * max(0, prompt_tokens) + max(0, max_tokens)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"
