"""The token budget of one engine step: decodes first, prompt chunks fill what is left.

Every step of the batch decodes one token for each running sequence and
prefills a chunk of each prompt in prefill, and a step takes about as long as
the tokens it computes. Without a bound, one long prompt arriving (2,000
tokens, prefilled in chunks of 256 for up to 8 prompts at once) makes every
running stream's next token wait for a whole chunk per prompt: measured on 2
CPU cores, 8 streams' gaps went from 127 ms to 1.5 s (p50) during it.

So, as vLLM's scheduler does with ``max_num_batched_tokens``, each step has a
budget of tokens. Running sequences are scheduled first, one token each: a
stream never waits for a prompt. The rest goes to prompts in prefill, which
share it evenly (the batch pads every prompt of a step to the longest chunk,
so even shares waste nothing), and a waiting prompt joins them, oldest first,
only while every prompt would still get a worthwhile chunk: at least
:data:`MIN_CHUNK` tokens, or all it has left. Short prompts (a chat turn)
therefore join many at a time and a long one takes what the others leave.
A larger budget gives a long prompt its first token sooner; a smaller one
keeps everyone else's next token closer. While nothing decodes there is no
stream to protect, and prompts are prefilled as without a budget. A budget of
0 turns it off: each prompt in prefill takes ``prefill_step_size`` tokens a
step (up to ``prefill_batch_size`` prompts), as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

CPU_BUDGET = 64
"""The default on a CPU, measured (docs/benchmarks.md, token budget): while a 2,000-token
prompt is prefilled, 8 streams' gaps 0.35x (p50) and 0.38x (max) of no budget's, the
prompt's first token 1.5x later, tokens/s at 1, 8 and 32 streams unchanged."""
GPU_BUDGET = 2048
"""The default on Metal and CUDA, where a step's cost grows far less with its tokens
(vLLM's default for interactive serving; not measured here: no GPU)."""
MIN_CHUNK = 32
"""Prompt tokens a prompt in prefill gets per step at least (unless the budget is smaller):
below this, a step's fixed cost outweighs the prompt work it does."""


@dataclass(frozen=True)
class TokenBudget:
    """Plans each step's prompt work within ``max_batched_tokens``.

    ``remaining`` lists the prompt tokens each prompt in prefill has still to
    compute (the shared prefill of ``n`` choices as one prompt).
    """

    max_batched_tokens: int
    """Tokens one step computes at most, decodes included; 0: no budget."""
    prefill_batch_size: int
    """Prompts in prefill at once, at most."""
    prefill_step_size: int
    """Each prompt's chunk when there is no budget."""

    def chunk(self, decoding: int, remaining: list[int]) -> int:
        """Prompt tokens each prompt in prefill computes this step."""
        if self.max_batched_tokens <= 0 or decoding == 0:
            return self.prefill_step_size
        left = self._left(decoding)
        share = left // max(1, len(remaining))
        return max(1, min(share, max(remaining, default=left)))

    def admits(self, decoding: int, remaining: list[int], prompt: int) -> bool:
        """Whether a waiting prompt of ``prompt`` tokens may join the prompts in prefill."""
        if len(remaining) >= self.prefill_batch_size:
            return False
        if self.max_batched_tokens <= 0 or decoding == 0 or not remaining:
            return True
        share = self._left(decoding) // (len(remaining) + 1)
        return share >= min(MIN_CHUNK, max(*remaining, prompt))

    def _left(self, decoding: int) -> int:
        return max(1, self.max_batched_tokens - decoding)


def default_budget(max_running: int) -> int:
    """The budget for the device MLX computes on (a CPU's is much smaller).

    At least twice ``max_running``: however many sequences decode, prompts keep
    half of every step.
    """
    device = CPU_BUDGET if mx.default_device().type == mx.DeviceType.cpu else GPU_BUDGET
    return max(device, 2 * max_running)
