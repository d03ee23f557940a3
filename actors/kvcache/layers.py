"""Helpers over mlx-lm per-layer caches and token keys, shared by the store and persistence.

A sequence's KV state is a list of per-layer cache objects (mlx-lm's
``KVCache`` and relatives, with ``.state``, ``.nbytes``, ``.offset``,
``.trim(n)``). Token sequences are keyed by their packed 64-bit bytes, which
makes exact matches a dict lookup and prefix tests C-speed byte comparisons.
"""

from __future__ import annotations

import copy
import hashlib
from array import array
from collections.abc import Sequence
from typing import Any, cast

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

CHECKSUM_VERSION = 1
"""Bumped whenever what the checksum covers changes, so old digests stop matching."""

_TOKEN_BYTES = 8


def token_key(tokens: Sequence[int]) -> bytes:
    """The packed signed 64-bit form of ``tokens``, used as the entry key."""
    return array("q", tokens).tobytes()


def key_tokens(key: bytes) -> list[int]:
    """The token ids a :func:`token_key` encodes."""
    unpacked = array("q")
    unpacked.frombytes(key)
    return unpacked.tolist()


def key_length(key: bytes) -> int:
    """How many tokens a key holds."""
    return len(key) // _TOKEN_BYTES


def common_prefix(a: bytes, b: bytes) -> int:
    """The number of leading tokens two keys share.

    Compares growing windows (each comparison runs in C), then bisects the
    first window that differs: O(shared length) byte work, O(log n) Python steps.
    """
    n = min(len(a), len(b)) // _TOKEN_BYTES
    low, step = 0, 64
    while True:  # invariant: the first ``low`` tokens are equal
        if low >= n:
            return n
        high = min(n, low + step)
        if (
            a[low * _TOKEN_BYTES : high * _TOKEN_BYTES]
            != b[low * _TOKEN_BYTES : high * _TOKEN_BYTES]
        ):
            break
        low, step = high, step * 2
    while high - low > 1:  # the first difference lies in tokens [low, high)
        middle = (low + high) // 2
        start, stop = low * _TOKEN_BYTES, middle * _TOKEN_BYTES
        if a[start:stop] == b[start:stop]:
            low = middle
        else:
            high = middle
    return low


def arrays_of(cache: Sequence[Any]) -> list[mx.array]:
    """Every MLX array held by the layers' states, in a fixed order."""
    found: list[mx.array] = []
    for layer in cache:
        found.extend(v for _, v in _flatten(layer.state) if isinstance(v, mx.array))
    return found


def _flatten(state: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs of a layer's state, in mlx's fixed order."""
    return cast(list[tuple[str, Any]], tree_flatten(state))


def cache_nbytes(cache: Sequence[Any]) -> int:
    """Bytes the layers hold, as mlx-lm counts them (allocated buffers)."""
    return sum(int(layer.nbytes) for layer in cache)


def materialize(cache: Sequence[Any]) -> None:
    """Evaluate the layers' arrays on the calling thread.

    MLX records lazy work on the creating thread's stream; another thread
    cannot evaluate it ("no Stream in current thread"). Evaluating at the door
    makes stored arrays usable from any thread (engine, persistence workers).
    """
    arrays = arrays_of(cache)
    if arrays:
        mx.eval(*arrays)


def check_length(cache: Sequence[Any], length: int) -> None:
    """Raise ``ValueError`` if a layer's ``offset`` says it covers another length."""
    if not cache:
        raise ValueError("a cache needs at least one layer")
    for layer in cache:
        offset = getattr(layer, "offset", None)
        if isinstance(offset, int) and offset != length:
            raise ValueError("cache length does not match its token count")


def is_trimmable(cache: Sequence[Any]) -> bool:
    """Whether every layer can be trimmed (mlx-lm's rule)."""
    return bool(can_trim_prompt_cache(list(cache)))


def private_copy(cache: Sequence[Any], length: int, trim: int) -> list[Any]:
    """A deep copy of ``cache`` with its last ``trim`` positions dropped.

    MLX arrays are copied by reference to the same buffer with their own graph
    node, so this is cheap, and writes to the copy (``update_and_fetch``) never
    reach the stored arrays.
    """
    copied: list[Any] = copy.deepcopy(list(cache))
    if trim > 0:
        trimmed: Any = trim_prompt_cache(copied, trim)  # annotated as a list, returns an int
        if trimmed != trim:
            raise ValueError("cache could not be trimmed to the shared prefix")
    check_length(copied, length)
    return copied


def checksum(key: bytes, cache: Sequence[Any], namespace: str = "") -> str:
    """A blake2b digest of an entry's metadata: namespace, token ids, layer types, shapes, offsets.

    It is cheap (no array data is read) and catches a stored cache that was
    changed behind the store's back, e.g. by a caller writing through an alias,
    or a file moved to another tenant's namespace. The default namespace adds
    nothing, so digests from before namespaces still match.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"troupe-kv-{CHECKSUM_VERSION}|{len(cache)}|".encode())
    if namespace:
        digest.update(f"namespace={namespace}|".encode())
    digest.update(key)
    for layer in cache:
        digest.update(_layer_metadata(layer).encode())
    return digest.hexdigest()


def _layer_metadata(layer: Any) -> str:
    parts = [type(layer).__name__]
    offset = getattr(layer, "offset", None)
    if isinstance(offset, int):
        parts.append(f"offset={offset}")
    for path, value in _flatten(layer.state):
        if isinstance(value, mx.array):
            parts.append(f"{path}:{value.dtype}:{tuple(value.shape)}")
        else:
            parts.append(f"{path}={value!r}")
    return "|" + ";".join(parts)


def content_digest(cache: Sequence[Any]) -> str:
    """A blake2b digest of every array's bytes (for files, where bits can rot)."""
    digest = hashlib.blake2b(digest_size=16)
    for value in arrays_of(cache):
        contiguous = mx.contiguous(value)
        mx.eval(contiguous)
        digest.update(f"{value.dtype}:{tuple(value.shape)}|".encode())
        digest.update(memoryview(cast(Any, contiguous)))
    return digest.hexdigest()
