"""The observability benchmark runs end to end, and its switch really switches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.observability_bench import main
from benchmarks.tracing_bench import main as tracing_main


@pytest.mark.timeout(120)
def test_a_short_run_writes_positive_figures(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "observability.json"
    quick = ["--rounds", "2", "--streams", "2", "--requests", "1", "--tokens", "4"]
    # The run checks itself that only the "on" rounds were counted and audited.
    assert main(["--model", str(model_dir), *quick, "--events", "200", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    serving = result["serving"]
    assert len(serving["rounds_on_tok_s"]) == len(serving["rounds_off_tok_s"]) == 2
    for name in ("on_tok_s", "off_tok_s", "ratio_on_to_off"):
        assert math.isfinite(serving[name]) and serving[name] > 0, name
    costs = result["per_event"]
    assert all(math.isfinite(v) and v > 0 for v in costs.values()), costs
    assert costs["per_request_total_us"] > costs["record_us"]
    assert "on/off, median of the pairs" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_a_short_tracing_run_exports_exactly_the_traced_requests(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tracing.json"
    quick = ["--rounds", "2", "--streams", "2", "--requests", "1", "--tokens", "4"]
    # The run checks itself that the receiver decoded exactly the traced requests.
    assert tracing_main(["--model", str(model_dir), *quick, "--json", str(out)]) == 0
    serving = json.loads(out.read_text())["serving"]
    assert serving["spans_exported_requests"] == 2 * 2 * 1
    for name in ("on_tok_s", "off_tok_s", "ratio_on_to_off"):
        assert math.isfinite(serving[name]) and serving[name] > 0, name
    assert "tracing on :" in capsys.readouterr().out
