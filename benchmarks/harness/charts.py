"""PNG charts of the concurrency sweep: one line per server.

matplotlib with the Agg backend (no display needed). It is in the ``bench``
extra; without it the run still writes its JSON and Markdown and says why
there are no charts.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.runner import RunResult, ScenarioResult
from benchmarks.harness.stats import ScenarioStats

THROUGHPUT = "throughput.png"
LATENCY = "latency_p95.png"


def _series(sweep: list[ScenarioResult], key: str) -> tuple[list[int], list[ScenarioStats]]:
    points = [(s.concurrency, s.servers[key]) for s in sweep if key in s.servers]
    return [c for c, _ in points], [stats for _, stats in points]


def write_charts(result: RunResult, out: Path) -> list[str]:
    """Write the sweep's charts into ``out``; return their file names (none if no sweep)."""
    sweep = sorted((s for s in result.scenarios if s.group == "sweep"), key=lambda s: s.concurrency)
    if not sweep:
        return []
    import matplotlib  # noqa: PLC0415 - optional, and slow to import

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    labels = {server.key: server.label for server in result.servers}
    levels = [s.concurrency for s in sweep]

    figure, axis = pyplot.subplots(figsize=(7, 4.5), layout="constrained")
    for key, label in labels.items():
        xs, stats = _series(sweep, key)
        axis.plot(xs, [s.output_tokens_per_s for s in stats], marker="o", label=label)
    _axes(axis, levels, "output tokens/s (successful requests)")
    axis.set_title("Throughput against concurrency")
    figure.savefig(out / THROUGHPUT, dpi=110)
    pyplot.close(figure)

    figure, (ttft, e2e) = pyplot.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
    for key, label in labels.items():
        xs, stats = _series(sweep, key)
        ttft.plot(
            xs, [s.ttft_ms.p95 if s.ttft_ms else None for s in stats], marker="o", label=label
        )
        e2e.plot(xs, [s.e2e_ms.p95 if s.e2e_ms else None for s in stats], marker="o", label=label)
    _axes(ttft, levels, "time to first token p95 (ms)")
    _axes(e2e, levels, "end-to-end latency p95 (ms)")
    figure.suptitle("p95 latency against concurrency")
    figure.savefig(out / LATENCY, dpi=110)
    pyplot.close(figure)
    return [THROUGHPUT, LATENCY]


def _axes(axis: object, levels: list[int], ylabel: str) -> None:
    from matplotlib.axes import Axes  # noqa: PLC0415

    assert isinstance(axis, Axes)
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel(ylabel)
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend()
