"""The runtime micro-benchmark runs end to end and reports usable figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.runtime_bench import BACKENDS, main


@pytest.mark.timeout(60)
def test_quick_run_writes_positive_figures_for_both_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"

    assert main(["--quick", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert set(report["backends"]) == set(BACKENDS)
    for backend in BACKENDS:
        figures = report["backends"][backend]
        for side in ("ask_runtime", "ask_raw"):
            for name in ("p50_us", "p99_us", "mean_us", "per_s"):
                value = figures[side][name]
                assert math.isfinite(value) and value > 0, (backend, side, name)
            assert figures[side]["p50_us"] <= figures[side]["p99_us"]
        for name in (
            "tell_runtime_per_s",
            "tell_raw_per_s",
            "concurrent_runtime_per_s",
            "concurrent_raw_per_s",
        ):
            assert math.isfinite(figures[name]) and figures[name] > 0, (backend, name)
        assert figures["ratios"] and all(r > 0 for r in figures["ratios"].values())
    assert report["environment"]["cpu_count"] >= 1
    assert report["environment"]["anyio"]
    table = capsys.readouterr().out
    assert all(f"{backend} " in table for backend in BACKENDS)
