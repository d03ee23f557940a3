"""An optimised BLAS for MLX's CPU backend, preloaded by restarting the process.

The ``mlx-cpu`` wheel links the reference BLAS (``libblas.so.3`` from Netlib),
which runs float32 matmuls about 20-40 times slower than MKL or OpenBLAS on the
same machine. MLX calls ``cblas_sgemm`` through the dynamic linker, so a BLAS
named in ``LD_PRELOAD`` serves those calls instead; the variable is read only
when a process starts, so ``troupe serve`` sets it and replaces itself with
``os.execv`` (same PID, same file descriptors), and the engine process it
spawns inherits it. The library must come from pip, not apt: MKL from the
``mkl`` package (self-contained, installed on Linux x86-64 by the ``cpu``
extra), else a system OpenBLAS where one happens to be installed.

Nothing here imports MLX: the choice happens before anything heavy loads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from api.config.checks import mlx_backends

log = logging.getLogger("troupe.server")

PRELOADED_ENV: Final = "MLX_TROUPE_BLAS_PRELOADED"
"""Set on the restarted process (to the library's path, or empty when none loaded), so
it never restarts again."""
SYSTEM_OPENBLAS: Final = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
_BLAS_NAMES: Final = ("blas", "mkl_rt", "openblas")


def cpu_backend() -> bool:
    """Whether MLX is installed with its Linux CPU backend and no CUDA one."""
    installed = mlx_backends()
    return "mlx-cpu" in installed and not any(name.startswith("mlx-cuda") for name in installed)


def candidates() -> list[Path]:
    """Optimised BLAS libraries on this machine, best first: pip's MKL, then a system OpenBLAS."""
    found = sorted((Path(sys.prefix) / "lib").glob("libmkl_rt.so.*"), reverse=True)
    found += [Path(path) for path in SYSTEM_OPENBLAS if Path(path).is_file()]
    return found


def loadable(library: Path) -> bool:
    """Whether the dynamic linker can load ``library`` with its dependencies."""
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_LOCAL)
    except OSError:
        return False
    return True


def choose_blas(setting: str) -> Path | None:
    """The library to preload for ``setting`` (``auto``, ``bundled`` or a path), or ``None``."""
    if setting == "bundled":
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    if not sys.platform.startswith("linux") or not cpu_backend():
        return None
    return next((library for library in candidates() if loadable(library)), None)


def restart_with_blas(setting: str, arguments: Sequence[str]) -> None:
    """Replace this process with itself under ``LD_PRELOAD`` of the chosen BLAS, if needed.

    Returns when nothing is to be preloaded, when the library is preloaded
    already, or when this process is the restarted one; otherwise it does not
    return. ``arguments`` are the ``troupe`` command's own (without the program).
    """
    if PRELOADED_ENV in os.environ:
        return
    library = choose_blas(setting)
    if library is None or str(library) in os.environ.get("LD_PRELOAD", "").split(":"):
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, (str(library), env.get("LD_PRELOAD", ""))))
    env[PRELOADED_ENV] = str(library)
    # Flushed first: whatever is buffered would otherwise be lost with the old image.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "api.cli.main", *arguments], env)


def mapped_blas(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """File names of the BLAS libraries mapped into this process (empty where unknown)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    names = {Path(line.split()[-1]).name for line in lines if "/" in line}
    return sorted(name for name in names if any(part in name for part in _BLAS_NAMES))


def describe_blas() -> str:
    """One log line naming the BLAS in use and how to change it."""
    wanted = os.environ.get(PRELOADED_ENV)
    mapped = mapped_blas()
    shown = ", ".join(mapped) or "unknown"
    if wanted and Path(wanted).name not in mapped:
        return f"blas: {Path(wanted).name} could not be preloaded; using {shown}"
    if wanted:
        return f"blas: {Path(wanted).name} preloaded (--blas bundled keeps MLX's own)"
    return f"blas: {shown}"


if __name__ == "__main__":
    # For the Makefile's benchmarks: the library `troupe serve --blas auto` preloads.
    chosen = choose_blas("auto")
    print(chosen or "")
