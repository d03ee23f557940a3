"""What the user sees while it runs and at the end: a progress bar and a table.

rich draws both: it redraws the bar in place on a terminal and prints plain
lines when the output is a file or a pipe (CI logs), and it ships type hints.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from benchmarks.harness.loadgen import Outcome
from benchmarks.harness.runner import RunResult
from benchmarks.harness.stats import Distribution


class RichProgress:
    """A progress bar per phase (scenario x server), with a running error count."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("errors {task.fields[errors]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.enabled,
        )
        self._task: TaskID | None = None
        self._description = ""
        self._errors = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def begin(self, description: str, total: int) -> Callable[[Outcome], None]:
        """Start a bar for one phase; the callback advances it."""
        self._description, self._errors = description, 0
        self._task = self.progress.add_task(description, total=total, errors=0)
        task = self._task

        def advance(outcome: Outcome) -> None:
            if not outcome.ok:
                self._errors += 1
            self.progress.update(task, advance=1, errors=self._errors)

        return advance

    def end(self) -> None:
        """The phase is over; without a live bar, say so in one line."""
        if not self.enabled:
            self.console.print(f"done: {self._description} (errors: {self._errors})")

    def note(self, text: str) -> None:
        """A line above the bars."""
        self.console.print(text)


def _ms(value: Distribution | None, attr: str) -> str:
    return "-" if value is None else f"{getattr(value, attr):,.0f}"


def summary_table(result: RunResult) -> Table:
    """One row per scenario and server with the main figures."""
    table = Table(title="troupe bench", header_style="bold")
    columns = (
        "scenario",
        "server",
        "ok/sent",
        "errors",
        "out tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p95",
        "ITL p50",
        "ITL p95",
        "E2E p95",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("scenario", "server") else "right")
    labels = {server.key: server.label for server in result.servers}
    for scenario in result.scenarios:
        for key, stats in scenario.servers.items():
            errors = ", ".join(f"{kind} {count}" for kind, count in stats.errors.items()) or "0"
            table.add_row(
                scenario.name,
                labels.get(key, key),
                f"{stats.succeeded}/{stats.requests}",
                errors,
                f"{stats.output_tokens_per_s:,.1f}",
                f"{stats.requests_per_s:,.2f}",
                _ms(stats.ttft_ms, "p50"),
                _ms(stats.ttft_ms, "p95"),
                f"{stats.itl_ms.p50:,.1f}" if stats.itl_ms else "-",
                f"{stats.itl_ms.p95:,.1f}" if stats.itl_ms else "-",
                _ms(stats.e2e_ms, "p95"),
            )
        table.add_section()
    return table


def print_summary(console: Console, result: RunResult) -> None:
    """The table (latencies in ms), then each target and whether it was met."""
    console.print(summary_table(result))
    console.print("latencies in ms; TTFT: time to first token, ITL: inter-token latency")
    for target in result.targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        ratio = "-" if target["ratio"] is None else f"{target['ratio']:.2f}x"
        console.print(f"target {target['name']}: {ratio} (goal {target['goal']}) {verdict}")
