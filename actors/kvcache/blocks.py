"""KV blocks addressed by chain hashes: the shared storage under the prefix cache.

A sequence's attention cache is cut, along its sequence axis, into blocks of
``block_tokens`` positions. Block ``i`` is named by a chain hash: the digest of
block ``i - 1``'s name and block ``i``'s token ids, rooted in the entry's
namespace and its layers' layout (classes, dtypes, shapes). Equal names mean
equal token prefixes, in the same namespace, for the same kind of cache, so
equal contents: 32 conversations that open with the same 2,000-token system
prompt hold its blocks once. This is vLLM's prefix-caching design (block
hashes over parent hash and block tokens); blocks here carry whole sequences'
arrays for every layer, not pages of a preallocated pool, because MLX arrays
are already reference-counted buffers.

Each block owns its buffers (copied out of the inserted cache), so freeing one
conversation never keeps another's buffer alive, and a block is freed when the
last entry using it goes. Only layers that are plain attention caches
(mlx-lm's ``KVCache`` and ``QuantizedKVCache``) can be cut; the store keeps
other caches (sliding windows, recurrent state) whole.

Nothing here locks: the store calls the table under its own lock, and cuts
and assembles arrays outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, QuantizedKVCache

DEFAULT_BLOCK_TOKENS = 64
"""Positions per block; chosen by ``benchmarks/prefix_dedup_bench.py`` (docs/benchmarks.md)."""

_TOKEN_BYTES = 8
_SEQUENCE_AXIS = -2
_KV: Any = KVCache  # mlx-lm leaves the cache classes unannotated
_QUANTIZED_KV: Any = QuantizedKVCache

Leaves = tuple[mx.array, ...]
"""One layer's arrays over a run of positions, in a fixed order."""
Piece = tuple[Leaves, ...]
"""Every layer's arrays over one run of positions."""


@dataclass(frozen=True)
class LayerKind:
    """What, besides its arrays, rebuilding one layer needs."""

    name: str
    """``KVCache`` or ``QuantizedKVCache``."""
    group_size: int = 0
    bits: int = 0

    def leaves(self, layer: Any) -> Leaves:
        """The layer's arrays over its first ``offset`` positions."""
        offset = int(layer.offset)
        if self.name == "KVCache":
            arrays = (layer.keys, layer.values)
        else:
            arrays = (*layer.keys, *layer.values)
        return tuple(a[..., :offset, :] for a in arrays)

    def rebuild(self, leaves: Leaves, length: int) -> Any:
        """A fresh layer over ``leaves`` covering ``length`` positions."""
        if self.name == "KVCache":
            return _KV.from_state((leaves[0], leaves[1], length))
        half = len(leaves) // 2
        return _QUANTIZED_KV.from_state(
            (leaves[:half], leaves[half:], length, self.group_size, self.bits)
        )


def layer_kinds(cache: Sequence[Any]) -> tuple[LayerKind, ...] | None:
    """Each layer's kind, or ``None`` when some layer cannot be cut into blocks.

    Exact classes only: a subclass may keep positions elsewhere (a rotating
    window, chunks) and would not come back whole.
    """
    kinds: list[LayerKind] = []
    for layer in cache:
        if getattr(layer, "keys", None) is None:
            return None
        if type(layer) is KVCache:
            kinds.append(LayerKind("KVCache"))
        elif type(layer) is QuantizedKVCache:
            kinds.append(LayerKind("QuantizedKVCache", layer.group_size, layer.bits))
        else:
            return None
    return tuple(kinds)


def chain_hashes(
    key: bytes, namespace: str, kinds: Sequence[LayerKind], layout: str, block_tokens: int
) -> list[bytes]:
    """The names of the full blocks of a token key, in order.

    The root covers the namespace and the layers' layout, so two tenants' (or
    two cache formats') blocks never share a name even for the same tokens.
    """
    root = hashlib.blake2b(digest_size=16, person=b"troupe-kv-block")
    root.update(f"{namespace}|{kinds!r}|{layout}".encode())
    parent = root.digest()
    names: list[bytes] = []
    step = block_tokens * _TOKEN_BYTES
    for start in range(0, len(key) - step + 1, step):
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(key[start : start + step])
        parent = digest.digest()
        names.append(parent)
    return names


def layout_of(kinds: Sequence[LayerKind], leaves: Sequence[Leaves]) -> str:
    """Each leaf's dtype and shape, the sequence axis left out (part of the chain's root)."""
    parts = []
    for kind, layer in zip(kinds, leaves, strict=True):
        shapes = ",".join(f"{a.dtype}{a.shape[:-2]}{a.shape[-1:]}" for a in layer)
        parts.append(f"{kind.name}[{shapes}]")
    return ";".join(parts)


def cut(leaves: Sequence[Leaves], start: int, stop: int) -> Piece:
    """Every layer's positions ``[start, stop)`` as new buffers (lazy until evaluated).

    ``mx.contiguous`` copies even a slice that is already contiguous, so the
    piece never keeps the inserted cache's whole buffer alive.
    """
    return tuple(tuple(mx.contiguous(a[..., start:stop, :]) for a in layer) for layer in leaves)


def head(piece: Piece, length: int) -> Piece:
    """The first ``length`` positions of a piece (a view; stored buffers are never written)."""
    return tuple(tuple(a[..., :length, :] for a in layer) for layer in piece)


def assemble(kinds: Sequence[LayerKind], pieces: Sequence[Piece], length: int) -> list[Any]:
    """Fresh layers over the pieces, joined in order, covering ``length`` positions."""
    layers: list[Any] = []
    for index, kind in enumerate(kinds):
        columns = zip(*(piece[index] for piece in pieces), strict=True)
        joined = tuple(_join(parts) for parts in columns)
        layers.append(kind.rebuild(joined, length))
    return layers


def _join(parts: Sequence[mx.array]) -> mx.array:
    """Parts joined along the sequence axis, always as a new array.

    A lone part is returned as a view, never as the stored array itself:
    ``keys[...] = x`` on a returned array rewrites that array's node, and
    the store's block must not see it.
    """
    if len(parts) == 1:
        return parts[0][..., : parts[0].shape[_SEQUENCE_AXIS], :]
    return mx.concatenate(list(parts), axis=_SEQUENCE_AXIS)


def evaluate(pieces: Iterable[Piece]) -> None:
    """Evaluate pieces on the calling thread (MLX binds lazy work to its thread's stream)."""
    arrays = [a for piece in pieces for layer in piece for a in layer]
    if arrays:
        mx.eval(*arrays)


def piece_nbytes(piece: Piece) -> int:
    """Bytes a piece's buffers hold."""
    return sum(int(a.nbytes) for layer in piece for a in layer)


def piece_metadata(piece: Piece) -> str:
    """Each array's dtype and shape: what a writer through an alias would change."""
    return "|".join(",".join(f"{a.dtype}{a.shape}" for a in layer) for layer in piece)


@dataclass
class Block:
    """One block's arrays and the number of entries that use it."""

    piece: Piece
    nbytes: int
    checksum: str
    refs: int = 1

    def intact(self, name: bytes) -> bool:
        """Whether the arrays still match the block's checksum."""
        return block_checksum(name, self.piece) == self.checksum


def block_checksum(name: bytes, piece: Piece) -> str:
    """A digest of a block's name and its arrays' metadata (no array data is read)."""
    digest = hashlib.blake2b(name, digest_size=16, person=b"troupe-kv-check")
    digest.update(piece_metadata(piece).encode())
    return digest.hexdigest()


class BlockTable:
    """Blocks by chain hash, reference-counted by the entries that use them.

    Not thread-safe: the store calls it under its lock.
    """

    def __init__(self, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("a block holds at least one position")
        self.block_tokens = block_tokens
        self._blocks: dict[bytes, Block] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, name: bytes) -> Block:
        """The block of that name (the caller holds a reference on it)."""
        return self._blocks[name]

    def pin(self, names: Sequence[bytes]) -> list[int]:
        """Take a reference on each present block; return the indexes of the missing ones.

        Pinned blocks stay while the caller cuts the missing ones outside the lock.
        """
        missing: list[int] = []
        for index, name in enumerate(names):
            block = self._blocks.get(name)
            if block is None:
                missing.append(index)
            else:
                block.refs += 1
        return missing

    def add(self, name: bytes, piece: Piece) -> None:
        """Store a freshly cut block with one reference (or take one on a twin added meanwhile)."""
        present = self._blocks.get(name)
        if present is not None:
            present.refs += 1
            return
        nbytes = piece_nbytes(piece)
        self._blocks[name] = Block(piece, nbytes, block_checksum(name, piece))
        self.nbytes += nbytes

    def release(self, names: Iterable[bytes]) -> int:
        """Drop one reference on each block; return the bytes freed."""
        freed = 0
        for name in names:
            block = self._blocks.get(name)
            if block is None:
                continue  # already dropped after a failed checksum
            block.refs -= 1
            if block.refs <= 0:
                freed += self._remove(name)
        return freed

    def discard(self, name: bytes) -> int:
        """Drop a block whatever its references (it failed its checksum); return bytes freed."""
        return self._remove(name) if name in self._blocks else 0

    def clear(self) -> None:
        """Drop every block."""
        self._blocks.clear()
        self.nbytes = 0

    def _remove(self, name: bytes) -> int:
        block = self._blocks.pop(name)
        self.nbytes -= block.nbytes
        return block.nbytes
