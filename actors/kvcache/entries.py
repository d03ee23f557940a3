"""How the prefix cache holds one sequence: whole layers, or a chain of shared blocks.

An entry over plain attention layers is a :class:`BlockChain`: the names of its
full blocks in the :class:`~actors.kvcache.blocks.BlockTable` plus a private
tail (the positions after the last full block). Any other cache (a sliding
window, recurrent state) is kept as :class:`WholeLayers`, as mlx-lm caches it.
Both are matched on their token keys; only how a hit is put together differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from actors.kvcache.blocks import (
    BlockTable,
    LayerKind,
    Leaves,
    Piece,
    assemble,
    head,
    piece_metadata,
)
from actors.kvcache.layers import (
    CHECKSUM_VERSION,
    checksum,
    common_prefix,
    is_trimmable,
    key_length,
    private_copy,
)


@dataclass
class WholeLayers:
    """mlx-lm layers stored as inserted (never mutated: hits are copies)."""

    cache: list[Any]


@dataclass
class BlockChain:
    """Full blocks by name, then the entry's own tail (``None`` when it ends on a block)."""

    kinds: tuple[LayerKind, ...]
    blocks: list[bytes]
    tail: Piece | None


Layout = WholeLayers | BlockChain


@dataclass
class Entry:
    """One cached sequence.

    ``nbytes`` counts only what the entry holds alone (whole layers, or its
    tail); ``logical_nbytes`` what it would hold if nothing were shared.
    """

    namespace: str
    key: bytes
    layout: Layout
    nbytes: int
    logical_nbytes: int
    checksum: str
    trimmable: bool

    @property
    def length(self) -> int:
        """Positions (tokens) the entry covers."""
        return key_length(self.key)

    @property
    def slot(self) -> tuple[str, bytes]:
        """The entry's key in the store: namespace and tokens."""
        return self.namespace, self.key


def entry_checksum(namespace: str, key: bytes, layout: Layout) -> str:
    """A digest of an entry's metadata (no array data is read).

    Whole layers keep :func:`~actors.kvcache.layers.checksum` (persisted files
    carry it); a chain covers its kinds, block names and tail shapes, and each
    block has a checksum of its own.
    """
    match layout:
        case WholeLayers(cache=cache):
            return checksum(key, cache, namespace)
        case BlockChain(kinds=kinds, blocks=blocks, tail=tail):
            digest = hashlib.blake2b(digest_size=16, person=b"troupe-kv-chain")
            digest.update(f"{CHECKSUM_VERSION}|{namespace}|{kinds!r}|".encode())
            digest.update(key)
            digest.update(b"".join(blocks))
            digest.update(piece_metadata(tail or ()).encode())
            return digest.hexdigest()


def damaged_blocks(entry: Entry, table: BlockTable, usable: int) -> list[bytes]:
    """Names of the blocks a hit of ``usable`` positions would read that fail their checksum."""
    if not isinstance(entry.layout, BlockChain):
        return []
    needed = entry.layout.blocks[: -(-usable // table.block_tokens)]
    return [name for name in needed if not table.get(name).intact(name)]


@dataclass(frozen=True)
class Gathered:
    """The arrays a hit needs, taken under the store's lock, joined outside it."""

    layout: Layout
    pieces: tuple[Piece, ...]
    length: int
    trim: int

    def layers(self) -> list[Any]:
        """Fresh layers covering ``length`` positions, private to the caller."""
        match self.layout:
            case WholeLayers(cache=cache):
                return private_copy(cache, self.length, self.trim)
            case BlockChain(kinds=kinds):
                return assemble(kinds, self.pieces, self.length)


def gather(entry: Entry, table: BlockTable, usable: int) -> Gathered:
    """Reference the arrays covering an entry's first ``usable`` positions.

    Block arrays are immutable and referenced, so an eviction after this
    returns cannot take them from under the caller.
    """
    match entry.layout:
        case WholeLayers():
            return Gathered(entry.layout, (), usable, entry.length - usable)
        case BlockChain(blocks=blocks, tail=tail):
            full, rest = divmod(usable, table.block_tokens)
            pieces = [table.get(name).piece for name in blocks[:full]]
            if rest:
                source = table.get(blocks[full]).piece if full < len(blocks) else tail
                assert source is not None, "a chain's positions end in its tail"
                pieces.append(head(source, rest))
            return Gathered(entry.layout, tuple(pieces), usable, 0)


def whole_entry(namespace: str, key: bytes, layers: list[Any], nbytes: int) -> Entry:
    """An entry keeping ``layers`` as they are (they cannot be cut into blocks)."""
    layout = WholeLayers(layers)
    digest = entry_checksum(namespace, key, layout)
    return Entry(namespace, key, layout, nbytes, nbytes, digest, is_trimmable(layers))


def best_entry(
    entries: Iterable[Entry], namespace: str, key: bytes, wanted: int
) -> tuple[Entry, int] | None:
    """The entry giving the longest reusable prefix, and its length; on a tie, the shortest entry.

    Entries of other namespaces are never candidates: whether another tenant
    sent a prompt must not show in this one's time to first token.
    """
    best: tuple[Entry, int] | None = None
    for entry in entries:
        if entry.namespace != namespace:
            continue
        shared = common_prefix(key, entry.key)
        if shared == entry.length < wanted:
            usable = shared  # a proper prefix of the prompt: used as it is
        elif entry.trimmable:
            usable = min(shared, wanted - 1)  # trimmed back, one token left
        else:
            continue
        if usable < 1:
            continue
        if best is None or (usable, -entry.length) > (best[1], -best[0].length):
            best = (entry, usable)
    return best


def tamper(entry: Entry, table: BlockTable) -> None:
    """Change an entry's metadata behind the store's back, as a writer through an alias would.

    A chained entry loses a position from its first block (so every entry
    sharing that block fails with it), or from its tail.
    """
    match entry.layout:
        case WholeLayers(cache=[first, *_]) if isinstance(getattr(first, "offset", None), int):
            first.offset += 1
        case WholeLayers():
            entry.checksum = "0" * len(entry.checksum)
        case BlockChain(blocks=[name, *_]):
            block = table.get(name)
            block.piece = (_shortened(block.piece[0]), *block.piece[1:])
        case BlockChain(tail=tail) if tail is not None:
            entry.layout.tail = (_shortened(tail[0]), *tail[1:])


def _shortened(layer: Leaves) -> Leaves:
    """A layer's arrays, the first one a position short."""
    first, *rest = layer
    return (first[..., : max(0, first.shape[-2] - 1), :], *rest)
