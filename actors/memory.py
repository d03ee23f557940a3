"""What a process of ours holds in memory: resident set and MLX's allocator.

One reader for every use: the metrics actor reads the server's figures at
query time, the engine process reads its own on every heartbeat, so that
``/v1/metrics`` can show the process that holds the weights, and the
kv-cache's pressure monitor reads them to decide when to evict. The figures
are a frozen message Struct so they travel across the process boundary.

Imports no anyio (the engine process runs this) and nothing of the actors.
"""

from __future__ import annotations

import sys

import mlx.core as mx
import msgspec
import psutil

try:
    import resource
except ImportError:  # Windows: no peak RSS from the kernel
    resource = None  # type: ignore[assignment]  # reason: optional platform module


class MemoryFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Memory of one process in bytes; ``None`` where it could not be read."""

    rss: int | None = None
    peak_rss: int | None = None
    mlx_active: int | None = None
    mlx_peak: int | None = None
    mlx_cache: int | None = None

    @property
    def usage(self) -> int | None:
        """The larger of the resident set and MLX's total, or ``None`` if neither is known.

        What the kv-cache's memory pressure is measured by: on a GPU, MLX's
        buffers are not in the resident set; on the CPU they are.
        """
        mlx_total = None
        if self.mlx_active is not None or self.mlx_cache is not None:
            mlx_total = (self.mlx_active or 0) + (self.mlx_cache or 0)
        known = [v for v in (self.rss, mlx_total) if v is not None]
        return max(known) if known else None


def _rss() -> int | None:
    try:
        return int(psutil.Process().memory_info().rss)
    except Exception:  # memory figures are optional, never fatal
        return None


def _max_rss() -> int | None:
    """The kernel's peak RSS, in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    try:
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except Exception:  # no resource module (Windows), or no figure
        return None
    return peak if sys.platform == "darwin" else peak * 1024


def _mlx(name: str) -> int | None:
    try:
        return int(getattr(mx, name)())
    except Exception:  # an older MLX, or no device: leave it unset
        return None


def read_memory(previous: MemoryFigures | None = None) -> MemoryFigures:
    """This process's memory now; each figure is ``None`` where its source fails.

    The peak RSS is the largest of the kernel's figure, the RSS seen now and
    the peak read ``previous``-ly, so it never goes down.
    """
    rss = _rss()
    peaks = [p for p in (rss, _max_rss(), previous.peak_rss if previous else None) if p is not None]
    return MemoryFigures(
        rss=rss,
        peak_rss=max(peaks) if peaks else None,
        mlx_active=_mlx("get_active_memory"),
        mlx_peak=_mlx("get_peak_memory"),
        mlx_cache=_mlx("get_cache_memory"),
    )
