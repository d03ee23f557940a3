"""``troupe bench`` end to end: real servers on the tiny model, reports, and no orphans."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api.cli.main import main as troupe_main
from benchmarks.harness.cli import main as bench_main
from benchmarks.harness.report import read_json
from benchmarks.harness.servers import free_port

REPO = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")
PNG = b"\x89PNG\r\n\x1a\n"


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (and is not a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


def started_pids(text: str) -> dict[str, int]:
    """Server label -> pid, from the harness's "started ..." lines."""
    return {label: int(pid) for label, pid in STARTED.findall(text)}


@pytest.mark.timeout(120)
def test_quick_run_measures_both_servers_reports_and_stops_them(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--quick", "--model", str(model_dir), "--levels", "1", "2", "--out", str(out)]

    assert bench_main([*argv, "--scenarios", "single,sweep,shared_prefix"]) == 0

    printed = capsys.readouterr().out
    pids = started_pids(printed)
    assert set(pids) == {"mlx-troupe", "mlx_lm.server"}
    assert not any(alive(pid) for pid in pids.values()), "a server outlived the run"
    result = read_json(out / "results.json")
    assert [s.name for s in result.scenarios] == ["single", "c1", "c2", "shared-prefix"]
    for scenario in result.scenarios:
        assert set(scenario.servers) == {"troupe", "mlx_lm"}
        for stats in scenario.servers.values():
            assert stats.succeeded == stats.requests == scenario.requests
            assert stats.errors == {}
            # Greedy decoding, so both do the same work: max_tokens each time.
            assert stats.mean_completion_tokens == scenario.max_tokens
            assert stats.output_tokens_per_s > 0
            assert stats.ttft_ms is not None and stats.e2e_ms is not None
            assert 0 < stats.ttft_ms.p50 <= stats.ttft_ms.p95 <= stats.e2e_ms.max
    targets = {target["name"]: target for target in result.targets}
    assert targets["single-stream output tok/s"]["ratio"] > 0
    assert targets["shared-prefix TTFT p95"]["ratio"] > 0
    assert targets["output tok/s at 64 clients"]["met"] is None  # not in this run
    assert result.environment["model"]["parameters"] > 1_000_000
    assert {server.key for server in result.servers} == {"troupe", "mlx_lm"}
    report = (out / "report.md").read_text()
    assert "mlx_lm.server" in report and "--decode-concurrency" in report
    assert str(model_dir.parent) not in report  # no local paths in a committed report
    for chart in ("throughput.png", "latency_p95.png"):
        assert (out / chart).read_bytes().startswith(PNG)
    assert "troupe bench" in printed and "single" in printed


@contextmanager
def instant_server(*args: str) -> Iterator[str]:
    """An instant server subprocess on a free port; its URL."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.harness.instant", "--port", str(port), *args]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert "instant server" in process.stdout.readline()  # listening from here on
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)


@pytest.mark.timeout(60)
def test_errors_injected_by_a_server_are_counted_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with instant_server("--fail-every", "4", "--fail-kind", "http500") as url:
        argv = ["--servers", "", "--url", f"fake={url}", "--quick", "--scenarios", "sweep"]
        code = bench_main([*argv, "--out", str(out), "--no-progress"])

    assert code == 0
    result = read_json(out / "results.json")
    # Chat requests 1-2 are the warm-up, 3-6 the sweep at 1 client, 7-10 at 4.
    for scenario in result.scenarios:
        stats = scenario.servers["fake"]
        assert stats.requests == 4
        assert stats.errors == {"http_500": 1}
        assert (stats.succeeded, stats.failed) == (3, 1)
        assert stats.output_tokens == 3 * scenario.max_tokens
    assert "http_500: 1" in (out / "report.md").read_text()


@pytest.mark.timeout(90)
def test_ctrl_c_stops_every_server_it_started(model_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks", "--servers", "troupe,instant"]
    command += ["--model", str(model_dir), "--out", str(tmp_path / "run"), "--no-progress"]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("done: warmup"):  # measuring from here
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        pids = started_pids("".join(lines))
        assert len(pids) == 2 and all(alive(pid) for pid in pids.values())

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)

    assert process.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 5  # the harness waited for them; /proc may lag a little
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids.values()), "an orphan server survived"


@pytest.mark.timeout(30)
def test_troupe_bench_delegates_to_the_harness(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        troupe_main(["bench", "--help"])

    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: troupe bench")
    assert "--servers" in shown and "mlx_lm" in shown


@pytest.mark.timeout(30)
def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main(["--servers", "troupe,vllm"])

    assert exited.value.code == 2
    assert "unknown server vllm" in capsys.readouterr().err
