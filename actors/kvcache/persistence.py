"""Optional persistence of the prefix cache: one safetensors file per entry.

Each file holds an entry's arrays (mlx-lm's ``save_prompt_cache`` layout, so
the layer classes and their scalar state come back with it) and string
metadata: the format version, a model tag, the entry's namespace, the token ids,
the entry's metadata checksum and a digest of the array bytes (a file of format
1, from before namespaces, loads into the default namespace). Files are written to a temporary
name and renamed, so a crash mid-write never leaves a half file under a real
name.

Loading validates every file and drops (deletes) only the bad ones: unreadable
or truncated, another format or model, a checksum or content digest that does
not match. A bad file is counted, never raised. One directory belongs to one
model: the tag keeps another model's entries from being reused by mistake.

Everything here blocks (file I/O, MLX evaluation); the actor runs it in a
worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from actors.kvcache.layers import checksum, content_digest, materialize, token_key
from actors.kvcache.store import PrefixCache, StoredEntry
from runtime.errors import describe_failure

log = logging.getLogger("troupe.kvcache.persistence")

FORMAT_VERSION = "2"
READABLE_FORMATS = frozenset({"1", FORMAT_VERSION})
SUFFIX = ".safetensors"
_TEMP_PREFIX = ".partial-"
_KEYS = ("format", "model", "order", "tokens", "checksum", "content")


class InvalidCacheFile(ValueError):
    """A persisted entry failed validation (its reason never names tokens or paths)."""


@dataclass(frozen=True)
class SaveResult:
    """What :func:`save_cache` did."""

    written: int
    failed: int
    """Entries that could not be written (or failed their checksum in memory)."""
    removed: int
    """Files of entries no longer cached, deleted so the directory mirrors the cache."""


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_cache` did."""

    loaded: int
    dropped: int
    """Bad files, deleted."""
    skipped: int
    """Good files the cache did not keep (over its limits, or its breaker refused)."""


def save_cache(
    cache: PrefixCache, directory: str | os.PathLike[str], model: str = ""
) -> SaveResult:
    """Write every entry of ``cache`` to ``directory`` and delete files of evicted ones."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    kept: set[str] = set()
    written = failed = 0
    for order, entry in enumerate(cache.snapshot()):
        name = entry_file_name(entry.tokens, model, entry.namespace)
        try:
            _write_entry(folder / name, entry, model, order)
        except Exception as exc:
            failed += 1
            log.warning("kv-cache entry not saved: %s", describe_failure(exc))
            continue
        kept.add(name)
        written += 1
    removed = 0
    for path in folder.iterdir():
        if path.name.endswith(SUFFIX) and path.name not in kept:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return SaveResult(written, failed, removed)


def load_cache(
    cache: PrefixCache, directory: str | os.PathLike[str], model: str = ""
) -> LoadResult:
    """Insert every valid persisted entry into ``cache``, oldest first; drop bad files.

    A missing directory loads nothing. Leftover temporary files of an
    interrupted save are deleted without being counted.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return LoadResult(0, 0, 0)
    loaded = dropped = skipped = 0
    valid: list[tuple[int, str, list[int], list[Any]]] = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(SUFFIX):
            continue
        if path.name.startswith(_TEMP_PREFIX):
            _discard(path)
            continue
        try:
            valid.append(_read_entry(path, model))
        except Exception as exc:
            dropped += 1
            log.warning("kv-cache file dropped: %s", describe_failure(exc))
            _discard(path)
    # In the saved order (least recently used first), so recency survives a restart.
    for _, namespace, tokens, layers in sorted(valid, key=lambda item: item[0]):
        if cache.insert(tokens, layers, namespace):
            loaded += 1
        else:
            skipped += 1
    return LoadResult(loaded, dropped, skipped)


def corrupt_files(directory: str | os.PathLike[str], count: int, *, truncate: bool) -> int:
    """Drill: damage up to ``count`` persisted files; return how many were damaged.

    Tampering flips bytes in the middle of a file (where the arrays are), so
    the file still parses and only the content digest can catch it;
    truncating cuts the file in half, as a crash mid-copy would.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return 0
    files = sorted(
        path
        for path in folder.iterdir()
        if path.name.endswith(SUFFIX) and not path.name.startswith(_TEMP_PREFIX)
    )
    for path in files[: max(0, count)]:
        size = path.stat().st_size
        if truncate:
            os.truncate(path, size // 2)
            continue
        with path.open("r+b") as file:
            file.seek(size - max(1, size // 4))
            chunk = file.read(16)
            file.seek(-len(chunk), os.SEEK_CUR)
            file.write(bytes(b ^ 0xFF for b in chunk))
    return min(len(files), max(0, count))


def entry_file_name(tokens: list[int], model: str = "", namespace: str = "") -> str:
    """The file name of an entry: a digest, so that names never reveal token ids."""
    digest = hashlib.blake2b(token_key(tokens), digest_size=16, person=b"troupe-kv-file")
    digest.update(model.encode())
    if namespace:
        digest.update(b"|" + namespace.encode())
    return digest.hexdigest() + SUFFIX


def _write_entry(path: Path, entry: StoredEntry, model: str, order: int) -> None:
    layers = entry.layers()  # raises for an entry damaged in memory
    metadata = {
        "format": FORMAT_VERSION,
        "model": model,
        "namespace": entry.namespace,
        "order": str(order),
        "tokens": ",".join(map(str, entry.tokens)),
        "checksum": checksum(token_key(entry.tokens), layers, entry.namespace),
        "content": content_digest(layers),
    }
    # mx.save_safetensors appends the suffix to names without it, so keep it last.
    temporary = path.with_name(f"{_TEMP_PREFIX}{path.name}")
    try:
        save_prompt_cache(str(temporary), layers, metadata)
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
        temporary.replace(path)
    finally:
        _discard(temporary)


def _read_entry(path: Path, model: str) -> tuple[int, str, list[int], list[Any]]:
    loader: Any = load_prompt_cache  # untyped in mlx-lm
    layers, metadata = loader(str(path), return_metadata=True)
    if not isinstance(metadata, dict) or any(k not in metadata for k in _KEYS):
        raise InvalidCacheFile("metadata is missing")
    if metadata["format"] not in READABLE_FORMATS or metadata["model"] != model:
        raise InvalidCacheFile("another format or model")
    namespace = metadata.get("namespace", "") if metadata["format"] != "1" else ""
    if not isinstance(namespace, str):
        raise InvalidCacheFile("namespace is unreadable")
    try:
        order = int(metadata["order"])
        tokens = [int(t) for t in metadata["tokens"].split(",")]
    except ValueError:
        raise InvalidCacheFile("order or token ids are unreadable") from None
    layers = list(layers)
    # Loading is lazy and bound to this thread's stream: evaluate here, so that
    # damage surfaces now and the arrays are usable from the engine's thread.
    materialize(layers)
    if checksum(token_key(tokens), layers, namespace) != metadata["checksum"]:
        raise InvalidCacheFile("metadata checksum does not match")
    if content_digest(layers) != metadata["content"]:
        raise InvalidCacheFile("array contents do not match their digest")
    return order, namespace, tokens, layers


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
