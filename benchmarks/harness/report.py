"""The targets, and the files a run leaves: ``results.json`` and ``report.md``.

The targets are ratios of mlx-troupe to mlx_lm.server from the same run, as
the project states them; they are goals to report honestly, not tests. A
target whose servers were not both measured is "not measured", never met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from benchmarks.harness.runner import RunResult, ScenarioResult
from benchmarks.harness.stats import Distribution, ScenarioStats

OURS: Final = "troupe"
THEIRS: Final = "mlx_lm"


@dataclass(frozen=True)
class Target:
    """A goal: ``measure`` of ours over theirs in ``scenario`` compared with ``goal``."""

    name: str
    scenario: str
    measure: str
    goal: float
    higher_is_better: bool
    zero_errors: bool = False

    def describe(self) -> str:
        """The goal as the report states it."""
        sign = ">=" if self.higher_is_better else "<="
        return f"{sign} {self.goal:.2f}x" + (", 0 errors" if self.zero_errors else "")


TARGETS: Final = (
    Target("output tok/s at 16 clients", "c16", "output_tokens_per_s", 1.2, True, True),
    Target("output tok/s at 64 clients", "c64", "output_tokens_per_s", 1.2, True, True),
    Target("single-stream output tok/s", "single", "output_tokens_per_s", 0.95, True),
    Target("shared-prefix TTFT p95", "shared-prefix", "ttft_p95_ms", 0.5, False),
)

_MEASURES: Final[dict[str, Callable[[ScenarioStats], float | None]]] = {
    "output_tokens_per_s": lambda s: s.output_tokens_per_s,
    "ttft_p95_ms": lambda s: s.ttft_ms.p95 if s.ttft_ms else None,
}


def evaluate(result: RunResult) -> list[dict[str, Any]]:
    """Each target's ratio, whether it was met and, if not, by how much."""
    by_name = {scenario.name: scenario for scenario in result.scenarios}
    return [_evaluate(target, by_name.get(target.scenario)) for target in TARGETS]


def _evaluate(target: Target, scenario: ScenarioResult | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": target.name,
        "scenario": target.scenario,
        "measure": target.measure,
        "goal": target.describe(),
        "ours": None,
        "theirs": None,
        "ratio": None,
        "our_errors": None,
        "met": None,
        "shortfall": None,
    }
    if scenario is None or OURS not in scenario.servers or THEIRS not in scenario.servers:
        return row
    measure = _MEASURES[target.measure]
    ours, theirs = measure(scenario.servers[OURS]), measure(scenario.servers[THEIRS])
    row |= {"ours": ours, "theirs": theirs, "our_errors": scenario.servers[OURS].failed}
    if ours is None or theirs is None or theirs <= 0:
        return row
    ratio = ours / theirs
    good = ratio >= target.goal if target.higher_is_better else ratio <= target.goal
    clean = not target.zero_errors or scenario.servers[OURS].failed == 0
    row |= {"ratio": ratio, "met": good and clean}
    if not good:
        # How far the ratio is from the goal, as a share of the goal.
        row["shortfall"] = abs(target.goal - ratio) / target.goal
    return row


def write_json(result: RunResult, path: Path) -> None:
    """Every figure of ``result`` as indented JSON."""
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")


def read_json(path: Path) -> RunResult:
    """A result written by :func:`write_json`."""
    return msgspec.json.decode(path.read_bytes(), type=RunResult)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _dist(value: Distribution | None) -> str:
    return "-" if value is None else f"{value.p50:,.1f} / {value.p95:,.1f} / {value.p99:,.1f}"


def markdown(result: RunResult, charts: list[str], command: str) -> str:
    """The human report: setup, targets, every figure, the charts."""
    env = result.environment
    machine, model = env.get("machine", {}), env.get("model", {})
    lines = [
        "# Serving benchmark: mlx-troupe and mlx_lm.server",
        "",
        f"Run {result.started} to {result.finished} with `{command}`.",
        "",
        "## Setup",
        "",
        f"- Machine: {machine.get('cpu')}, {machine.get('cpu_count')} cores, "
        f"{machine.get('memory_gib')} GiB; {machine.get('platform')}",
        f"- Load average (1, 5, 15 min) before: {machine.get('load_average')}, "
        f"after: {env.get('load_average_after')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        f"- Commit: {env.get('git_commit')}",
        f"- Model: {model.get('name')} ({_fmt(model.get('parameters'), 0)} parameters, "
        f"{_fmt((model.get('bytes') or 0) / 1024**2)} MiB of weights, "
        f"{model.get('model_type')}, context {model.get('context_length')})",
        f"- BLAS preloaded for every server: {env.get('blas_preload') or 'none (bundled)'}",
        f"- Requests: streaming chat completions, {result.sampling}, fixed prompts and "
        "max_tokens, usage included",
        "",
        "| server | command | BLAS mapped |",
        "| --- | --- | --- |",
    ]
    for server in result.servers:
        command_line = " ".join(server.command) or server.url
        lines.append(f"| {server.label} | `{command_line}` | {', '.join(server.blas) or '-'} |")
    lines += [
        "",
        "BLAS mapped: every BLAS library in the memory maps of the server and its child",
        "processes (mlx-troupe's engine process); a preloaded one resolves the BLAS symbols",
        "first, so it is the one in use.",
        "",
        "## Targets (ratio mlx-troupe / mlx_lm.server)",
        "",
    ]
    lines += _targets_table(result)
    lines += ["", "## Figures", "", *_figures_table(result), ""]
    lines += [
        "Latencies in ms as p50 / p95 / p99 over successful requests. TTFT: request sent to",
        "first generated text. ITL: per request, (last token - first token) / (tokens - 1).",
        "E2E: request sent to end of stream. Output tok/s and req/s count successful requests",
        "over the scenario's wall time; every failed request is counted under its error kind.",
        "Client CPU: the load generator's CPU seconds per second (1.0 = one core); server CPU:",
        "the CPU seconds per second of the server and its child processes (mlx-troupe's",
        "engine process), and per output token.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in charts]
    return "\n".join(lines) + "\n"


def _targets_table(result: RunResult) -> list[str]:
    rows = [
        "| target | goal | mlx-troupe | mlx_lm.server | ratio | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target in result.targets:
        met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
        if target["shortfall"] is not None:
            met += f" ({target['shortfall']:.0%} short)"
        elif target["met"] is False:
            met += f" ({target['our_errors']} errors)"
        ratio = "-" if target["ratio"] is None else f"{target['ratio']:.2f}x"
        rows.append(
            f"| {target['name']} | {target['goal']} | {_fmt(target['ours'])} "
            f"| {_fmt(target['theirs'])} | {ratio} | {met} |"
        )
    return rows


def _figures_table(result: RunResult) -> list[str]:
    labels = {server.key: server.label for server in result.servers}
    rows = [
        "| scenario | server | ok/sent | errors | out tok/s | req/s | TTFT | ITL | E2E "
        "| tok/req | prompt tok | client CPU | server CPU | server CPU ms/tok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in result.scenarios:
        for key, stats in scenario.servers.items():
            errors = ", ".join(f"{kind}: {count}" for kind, count in stats.errors.items()) or "0"
            rows.append(
                f"| {scenario.name} | {labels.get(key, key)} | {stats.succeeded}/{stats.requests} "
                f"| {errors} | {stats.output_tokens_per_s:,.1f} | {stats.requests_per_s:,.2f} "
                f"| {_dist(stats.ttft_ms)} | {_dist(stats.itl_ms)} | {_dist(stats.e2e_ms)} "
                f"| {stats.mean_completion_tokens:.1f} | {_fmt(stats.mean_prompt_tokens, 0)} "
                f"| {stats.client_cpu_fraction:.2f} | {_fmt(stats.server_cpu_fraction, 2)} "
                f"| {_fmt(stats.server_cpu_ms_per_token, 2)} |"
            )
    return rows
