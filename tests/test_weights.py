"""The weight layout per device: float32 on a CPU when memory allows, as stored elsewhere."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx.nn.layers.quantized import QuantizedLinear, quantize
from mlx.utils import tree_flatten

from actors.model import LoadedModel, load_model
from actors.model.weights import describe_choice, fit_weights, float32_bytes, weight_bytes

pytestmark = pytest.mark.timeout(120)
GIB = 2**30


def quantized_tiny(model_dir: Path) -> LoadedModel:
    """The tiny model, loaded afresh and quantized to 4 bits (group 32) in place."""
    loaded = load_model(model_dir)
    quantize(loaded.model, group_size=32, bits=4)
    mx.eval(loaded.model.parameters())  # type: ignore[no-untyped-call]
    return loaded


def logits(loaded: LoadedModel) -> mx.array:
    result: mx.array = loaded.model(mx.array([[5, 17, 42, 99, 7]]))
    return result


def quantized_layers(loaded: LoadedModel) -> int:
    modules = loaded.model.named_modules()  # type: ignore[no-untyped-call]
    return sum(isinstance(module, QuantizedLinear) for _, module in modules)


def test_auto_on_a_cpu_widens_quantized_weights_to_the_same_function(model_dir: Path) -> None:
    loaded = quantized_tiny(model_dir)
    before = logits(loaded)
    packed = weight_bytes(loaded.model)
    fitted, choice = fit_weights(loaded, "auto", 16 * GIB, on_cpu=True)
    assert choice.layout == "float32"
    assert (choice.bytes_before, choice.bytes_after) == (packed, weight_bytes(fitted.model))
    assert weight_bytes(fitted.model) == float32_bytes(loaded.num_parameters)
    assert quantized_layers(fitted) == 0
    # Dequantizing is exact up to float32 rounding of scale * q + bias.
    assert mx.allclose(logits(fitted), before, atol=1e-4).item()
    assert "widened to float32" in describe_choice(choice)
    assert "--weights quantized" in describe_choice(choice)


@pytest.mark.parametrize(
    ("mode", "on_cpu", "budget", "reason"),
    [
        ("quantized", True, 16 * GIB, "quantized was asked for"),
        ("auto", False, 16 * GIB, "fast quantized"),
        ("auto", True, 1024, "would pass half the free memory budget"),
    ],
)
def test_weights_stay_as_stored(
    model_dir: Path, mode: str, on_cpu: bool, budget: int, reason: str
) -> None:
    loaded = quantized_tiny(model_dir)
    fitted, choice = fit_weights(loaded, mode, budget, on_cpu=on_cpu)  # type: ignore[arg-type]
    assert fitted is loaded
    assert choice.layout == "as stored"
    assert reason in choice.reason
    assert quantized_layers(fitted) > 0


def test_float32_is_widened_on_any_device_and_float32_weights_are_left_alone(
    model_dir: Path, loaded_model: LoadedModel
) -> None:
    fitted, choice = fit_weights(quantized_tiny(model_dir), "float32", 0, on_cpu=False)
    assert choice.layout == "float32"
    assert weight_bytes(fitted.model) == float32_bytes(fitted.num_parameters)
    same, kept = fit_weights(loaded_model, "auto", 16 * GIB, on_cpu=True)
    assert same is loaded_model
    assert kept.reason == "the weights are float32"


def test_half_precision_weights_are_widened_on_a_cpu(model_dir: Path) -> None:
    loaded = load_model(model_dir)
    loaded.model.set_dtype(mx.float16)
    fitted, choice = fit_weights(loaded, "auto", 16 * GIB, on_cpu=True)
    assert choice.layout == "float32"
    assert all(v.dtype == mx.float32 for _, v in _flat(fitted))


def _flat(loaded: LoadedModel) -> list[tuple[str, mx.array]]:
    flat: list[tuple[str, mx.array]] = []
    tree_flatten(loaded.model.parameters(), destination=flat)  # type: ignore[no-untyped-call]
    return flat
