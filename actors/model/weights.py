"""Choosing the weight layout that is fastest on the device the engine runs on.

On Metal and CUDA, MLX's quantized matmul kernels are the fast path and the
weights stay as stored. On the CPU they are not: MLX's quantized CPU kernels
cap batched decode of SmolLM2-135M at about 12 tok/s at any batch size, while
the same weights in float32 go through the BLAS (sgemm) and reach about 180
tok/s at batch 32 with an optimised BLAS. Half-precision weights are slow on
the CPU for the same reason (no half-precision BLAS). So on a CPU device the
``auto`` layout dequantizes quantized layers and widens half-precision
weights to float32, when the memory budget allows the larger copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Final, Literal, cast

import mlx.core as mx
import psutil
from mlx.nn.layers.base import Module  # mypy --strict misses mlx.nn's implicit re-export
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import dequantize_model

from actors.model.loader import LoadedModel

log = logging.getLogger("troupe.model")

WeightsMode = Literal["auto", "quantized", "float32"]
WEIGHTS_MODES: Final = ("auto", "quantized", "float32")
BUDGET_SHARE: Final = 0.5
"""The most of the memory budget's free part that widened weights may take (the
rest stays for the KV cache, the prefix cache and the process itself)."""
_FLOAT32_BYTES: Final = 4


@dataclass(frozen=True)
class WeightsChoice:
    """What :func:`fit_weights` did and why, for the startup log and status."""

    layout: Literal["as stored", "float32"]
    reason: str
    bytes_before: int
    bytes_after: int


def weight_bytes(model: Module) -> int:
    """Bytes the model's parameters take now (packed quantized weights count packed)."""
    flat = _flat_parameters(model)
    return sum(value.nbytes for _, value in flat)


def float32_bytes(num_parameters: int) -> int:
    """Bytes the model's parameters would take in float32."""
    return num_parameters * _FLOAT32_BYTES


def cpu_device() -> bool:
    """Whether MLX computes on the CPU (no Metal or CUDA device is the default)."""
    return mx.default_device().type == mx.DeviceType.cpu


def fit_weights(
    loaded: LoadedModel, mode: WeightsMode, free_budget: int, *, on_cpu: bool | None = None
) -> tuple[LoadedModel, WeightsChoice]:
    """``loaded`` in the layout ``mode`` asks for on this device, and what was chosen.

    ``auto`` widens to float32 on a CPU device when the float32 copy fits in
    :data:`BUDGET_SHARE` of ``free_budget`` (bytes the memory budget has left),
    and keeps the stored layout otherwise; ``float32`` widens on any device;
    ``quantized`` never does.
    """
    before = weight_bytes(loaded.model)
    wide = float32_bytes(loaded.num_parameters)
    on_cpu = cpu_device() if on_cpu is None else on_cpu
    if mode == "quantized":
        return loaded, WeightsChoice(
            "as stored", "weights: quantized was asked for", before, before
        )
    if _already_float32(loaded.model):
        return loaded, WeightsChoice("as stored", "the weights are float32", before, before)
    if mode == "auto" and not on_cpu:
        reason = "the device has fast quantized and half-precision kernels"
        return loaded, WeightsChoice("as stored", reason, before, before)
    if mode == "auto" and wide > free_budget * BUDGET_SHARE:
        reason = f"a float32 copy ({_mib(wide)}) would pass half the free memory budget"
        return loaded, WeightsChoice("as stored", reason, before, before)
    widened = widen_to_float32(loaded)
    reason = "the CPU runs float32 through the BLAS, quantized weights through slow kernels"
    return widened, WeightsChoice("float32", reason, before, weight_bytes(widened.model))


def widen_to_float32(loaded: LoadedModel) -> LoadedModel:
    """The model with quantized layers dequantized and every float parameter in float32.

    The module is changed in place (its quantized arrays are released) and the
    result shares it; the tokenizer and facts are unchanged.
    """
    model = dequantize_model(loaded.model)

    def widen(value: mx.array) -> mx.array:
        return value.astype(mx.float32) if mx.issubdtype(value.dtype, mx.floating) else value

    model.update(tree_map(widen, model.parameters()))
    mx.eval(model.parameters())
    return replace(loaded, model=model)


def fit_for_device(loaded: LoadedModel, mode: str, high_water: int) -> LoadedModel:
    """:func:`fit_weights` against what the memory budget has free now; logs the choice."""
    if mode not in WEIGHTS_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS_MODES)}, not {mode!r}")
    free = max(0, high_water - int(psutil.virtual_memory().used))
    fitted, choice = fit_weights(loaded, cast(WeightsMode, mode), free)
    log.info(describe_choice(choice))
    return fitted


def kv_bytes_per_token(model: Module) -> int:
    """KV cache bytes one token takes in ``model`` (keys and values of every layer).

    Measured, not derived from a config: one token goes through a fresh prompt
    cache, and each layer's key and value rows are sized as allocated (heads x
    head size x the dtype the activations have). Caches that do not grow per
    token (rotating windows, state-space layers) count as they are.
    """
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([[0]]), cache=cache))
    total = 0
    for layer in cache:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        for rows in (keys, values):
            if isinstance(rows, mx.array) and rows.ndim == 4:
                total += rows.shape[1] * rows.shape[3] * rows.itemsize
    return total


def describe_choice(choice: WeightsChoice) -> str:
    """One log line: the layout, the bytes and the reason."""
    if choice.layout == "float32":
        sizes = f"{_mib(choice.bytes_before)} -> {_mib(choice.bytes_after)}"
        keep = "--weights quantized keeps them"
        return f"weights: widened to float32 ({sizes}): {choice.reason}; {keep}"
    return f"weights: as stored ({_mib(choice.bytes_before)}): {choice.reason}"


def _already_float32(model: Module) -> bool:
    flat = _flat_parameters(model)
    floats = [value for _, value in flat if mx.issubdtype(value.dtype, mx.floating)]
    return len(floats) == len(flat) and all(value.dtype == mx.float32 for value in floats)


def _flat_parameters(model: Module) -> list[tuple[str, mx.array]]:
    flat: list[tuple[str, mx.array]] = []
    tree_flatten(model.parameters(), destination=flat)  # type: ignore[no-untyped-call]
    return flat


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
