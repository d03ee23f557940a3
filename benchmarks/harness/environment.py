"""What a run was measured on: versions, CPU, memory, load, BLAS and model.

Read without importing MLX: the harness process only generates load, so it
stays small, and the BLAS reported is the one each server process mapped.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psutil

from api.cli.blas import choose_blas

PACKAGES: Final = ("mlx", "mlx-lm", "mlx-troupe", "anyio", "hypercorn", "h11", "msgspec")


def default_preload() -> str | None:
    """The BLAS to preload for every server: the one ``troupe serve --blas auto`` would take."""
    chosen = choose_blas("auto")
    return None if chosen is None else str(chosen)


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the figures."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path) -> str | None:
    """The checked-out commit, with ``-dirty`` when tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.returncode else "")


def safetensors_parameters(path: Path) -> int:
    """Parameters in one safetensors file, from its JSON header alone."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header: dict[str, Any] = json.loads(file.read(length))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


def model_facts(model: str | None) -> dict[str, Any]:
    """Name, parameters, bytes on disk and architecture of a local model directory."""
    if model is None:
        return {"name": None}
    directory = Path(model)
    if not directory.is_dir():
        return {"name": model, "local": False}
    weights = sorted(directory.glob("*.safetensors"))
    facts: dict[str, Any] = {
        "name": directory.name,
        "parameters": sum(safetensors_parameters(path) for path in weights),
        "bytes": sum(path.stat().st_size for path in weights),
    }
    try:
        config = json.loads((directory / "config.json").read_text())
        keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "torch_dtype")
        facts |= {key: config.get(key) for key in keys}
        facts["context_length"] = config.get("max_position_embeddings")
    except (OSError, ValueError):
        pass
    return facts


def machine() -> dict[str, Any]:
    """CPU, cores, memory and the load average at this moment."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def without_paths(part: str) -> str:
    """A command-line word without this machine's directories (reports are committed)."""
    return Path(part).name if part.startswith("/") else part


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_report(
    out: Path, module: str, argv: Sequence[str] | None, blas: str, started: float, **found: Any
) -> None:
    """Write (and print) a side-by-side benchmark's JSON report.

    What ran (``python -m module`` and its arguments), on what (versions, the
    BLAS: ``blas`` is the ``--blas`` choice), how long it took since
    ``started``, then ``found`` (its results).
    """
    report = {
        "command": " ".join([f"python -m {module}", *(argv or sys.argv[1:])]),
        "versions": versions(),
        "blas": "preloaded" if blas == "auto" and default_preload() else "bundled",
        "seconds": round(time.time() - started, 1),
        **found,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
