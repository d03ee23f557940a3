"""Bugs the fuzzer and the reliability runs found, each pinned by the smallest test."""

from __future__ import annotations

import mlx.core as mx

from actors.generation.protocol import SamplingParams
from actors.generation.sampling import RequestSampler


def test_a_top_k_beyond_the_vocabulary_keeps_every_token_instead_of_crashing() -> None:
    # Found by tests/test_fuzz.py: {"top_k": 1024} on a 512-token vocabulary
    # raised inside the engine, crashing it for every request in the batch.
    logprobs = mx.log(mx.softmax(mx.arange(8, dtype=mx.float32)[None, :], axis=-1))
    for top_k in (8, 9, 1024):
        sampler = RequestSampler(SamplingParams(temperature=1.0, top_k=top_k, seed=3))
        token = sampler(logprobs)
        mx.eval(token)
        assert 0 <= int(token.item()) < 8
