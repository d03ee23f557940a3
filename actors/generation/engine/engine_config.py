"""The engine's batching limits (imported by the api's settings without the engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """Batching limits. Defaults suit a CPU: small prefill chunks keep streams smooth."""

    completion_batch_size: int = 32
    """Sequences decoded together at most (also how many enter the batch at once)."""
    prefill_batch_size: int = 8
    """Prompts prefilled together at most."""
    prefill_step_size: int = 256
    """Prompt tokens each prompt in prefill takes per step when there is no token budget."""
    max_batched_tokens: int | None = None
    """Tokens one engine step computes at most, decodes first (see
    :mod:`actors.generation.engine.token_budget`); 0: no budget; ``None``: the
    backend's default (:func:`~actors.generation.engine.token_budget.default_budget`)."""
    weights: str = "auto"
    """Weight layout (``auto``, ``quantized`` or ``float32``; see ``actors.model.weights``)."""
    shards: int = 1
    """Processes the model is split over on this machine (tensor parallelism over an
    ``mx.distributed`` ring; see ``actors.generation.shards.group``); 1: not split."""
    shard_hosts: tuple[str, ...] = ()
    """Where the ranks run: rank 0's address (this machine, as the others reach it),
    then one host per follower, started over SSH; empty: every rank here, on loopback."""
    shard_port: int = 32323
    """Rank r's ring port on its host is ``shard_port + r`` (with ``shard_hosts``)."""
