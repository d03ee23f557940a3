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

from dataclasses import dataclass, field


@dataclass
class _ModelMemory:
    kv_bytes_per_token: int = 0
    model_bytes: int = 0
    booked_tokens: int = 0


@dataclass
class MemoryBook:
    """The budget, what each model's engine last reported, and the KV tokens booked.

    With several models in one server each reports its own figures (under its
    name; "" with one model), and a request books its tokens under its model:
    the budget is one, shared by every model's weights, prefix cache and KV.
    """

    budget: int | None
    """Bytes for weights, prefix caches and every admitted request's KV cache; ``None``: off."""
    models: dict[str, _ModelMemory] = field(default_factory=dict)

    def report(self, model: str, kv_bytes_per_token: int, model_bytes: int) -> None:
        """Take a model's latest figures."""
        figures = self.models.setdefault(model, _ModelMemory())
        figures.kv_bytes_per_token = max(0, kv_bytes_per_token)
        figures.model_bytes = max(0, model_bytes)

    def book(self, model: str, tokens: int) -> None:
        """Book (or, negative, give back) KV tokens of a request for ``model``."""
        self.models.setdefault(model, _ModelMemory()).booked_tokens += tokens

    @property
    def booked_tokens(self) -> int:
        """KV tokens of the requests in flight (choices x prompt, plus their max_tokens)."""
        return sum(figures.booked_tokens for figures in self.models.values())

    @property
    def active(self) -> bool:
        """Whether admission checks memory (a budget, and an engine's figures)."""
        return self.budget is not None and any(
            figures.kv_bytes_per_token for figures in self.models.values()
        )

    @property
    def left(self) -> int | None:
        """Bytes the budget has left for KV caches after the weights and the prefix caches."""
        if self.budget is None or not self.active:
            return None
        return self.budget - sum(figures.model_bytes for figures in self.models.values())

    def refusal(self, model: str, tokens: int, others_in_flight: int) -> str | None:
        """Why ``tokens`` more KV tokens for ``model`` do not fit, or ``None`` if they do.

        A request is not refused when nothing else is in flight: the estimate
        errs high (max_tokens is a ceiling), and the prefix cache gives way
        under pressure, so refusing it would turn it away forever.
        """
        left = self.left
        figures = self.models.get(model)
        if left is None or figures is None or not others_in_flight:
            return None
        need = tokens * figures.kv_bytes_per_token
        booked = sum(f.booked_tokens * f.kv_bytes_per_token for f in self.models.values())
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
