"""Log-probabilities of sampled tokens, read from the batch's per-row distribution.

Engine thread only. mlx-lm's batch generator hands back each row's
normalized log-probabilities over the vocabulary (already evaluated); only
requests that asked for them pay for the lookups and the top-k.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

from actors.generation.protocol import LOGPROB_FLOOR, TokenLogprob


def token_logprob(row: Any, token: int, top: int) -> TokenLogprob:
    """``token``'s log-probability in ``row`` and the ``top`` most likely tokens."""
    if top <= 0:
        return TokenLogprob(token=token, logprob=_finite(row[token].item()))
    top = min(top, row.shape[-1])
    candidates = mx.argpartition(-row, kth=top - 1)[:top]
    values = row[candidates]
    order = mx.argsort(-values)
    ids: Any = candidates[order].tolist()
    logprobs: Any = values[order].tolist()
    return TokenLogprob(
        token=token,
        logprob=_finite(row[token].item()),
        top_tokens=[int(i) for i in ids],
        top_logprobs=[_finite(v) for v in logprobs],
    )


def _finite(value: float) -> float:
    """JSON has no minus infinity: a forbidden token gets :data:`LOGPROB_FLOOR`."""
    return value if math.isfinite(value) else LOGPROB_FLOOR
