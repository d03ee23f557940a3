"""The order of a run: start, wait, warm up, measure each scenario on each server, stop.

Servers are started together and stay up for the whole run; each scenario is
then sent to one server at a time (the others idle), in an order that
alternates from one scenario to the next, so a slow drift in the machine's
load does not always favour the same server. Whatever happens (an error, a
Ctrl-C), every server this run started is stopped before :func:`run` returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import msgspec

from benchmarks.harness import environment
from benchmarks.harness.loadgen import Load, Outcome, Target, run_load
from benchmarks.harness.scenarios import Scenario, SuiteConfig, build_suite, warmup
from benchmarks.harness.servers import (
    KINDS,
    Batching,
    ManagedServer,
    ServerFailed,
    attach,
    server_environment,
    start_server,
)
from benchmarks.harness.stats import ScenarioStats, summarize

REPO = Path(__file__).resolve().parents[2]


class ProgressSink(Protocol):
    """Where the runner reports progress (a progress bar, or nothing)."""

    def begin(self, description: str, total: int) -> Callable[[Outcome], None]:
        """A phase starts; the returned callback is called with each outcome."""

    def end(self) -> None:
        """The phase ended."""

    def note(self, text: str) -> None:
        """A line for the user (servers started, stopped)."""


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One server as measured: how it was started and what it ran with."""

    key: str
    label: str
    url: str
    command: list[str]
    model_name: str
    blas: list[str]
    started_here: bool


class ScenarioResult(msgspec.Struct, frozen=True, kw_only=True):
    """One scenario: what was sent, and the figures of each server."""

    name: str
    group: str
    description: str
    concurrency: int
    max_tokens: int
    requests: int
    servers: dict[str, ScenarioStats]


class RunResult(msgspec.Struct, kw_only=True):
    """A whole run (written as the JSON report)."""

    started: str
    finished: str = ""
    environment: dict[str, Any]
    batching: dict[str, int]
    sampling: str
    servers: list[ServerInfo] = msgspec.field(default_factory=list)
    scenarios: list[ScenarioResult] = msgspec.field(default_factory=list)
    targets: list[dict[str, Any]] = msgspec.field(default_factory=list)


@dataclass
class RunOptions:
    """Everything a run needs to know."""

    servers: Sequence[str] = ("troupe", "mlx_lm")
    urls: Sequence[tuple[str, str]] = ()
    model: str | None = None
    size: str = "tiny"
    model_name: str | None = None
    batching: Batching = field(default_factory=Batching)
    preload: str | None = None
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    timeout: float = 300.0
    ready_timeout: float = 180.0
    sampling_seed: int | None = None
    rounds: int = 4
    log_dir: Path = Path("bench-logs")


def resolve_model(options: RunOptions) -> str | None:
    """The model directory to serve: ``--model``, else the embedded model (generated once).

    A GGUF file is converted once (as ``troupe serve`` does) and both servers get
    the converted directory, since ``mlx_lm.server`` does not read GGUF.
    """
    if not options.servers or set(options.servers) <= {"instant"}:
        return options.model
    if options.model is not None and not options.model.endswith(".gguf"):
        return options.model
    # In a child process: MLX and the model generator stay out of the load generator.
    code = "import sys; from pathlib import Path; from actors.model.embedded import cache_dir, "
    code += "default_model_dir; from actors.model.gguf import gguf_model_dir; "
    code += "model = sys.argv[1]; print(gguf_model_dir(Path(model), cache_dir()) "
    code += "if model.endswith('.gguf') else default_model_dir(model))"
    done = subprocess.run(
        [sys.executable, "-c", code, options.model or options.size],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=600,
    )
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def started_servers(
    options: RunOptions, model: str | None, progress: ProgressSink
) -> Iterator[list[ManagedServer]]:
    """Start (or attach) every server, wait until each is ready; stop them all on exit."""
    with contextlib.ExitStack() as stack:
        env = server_environment(options.preload)
        servers: list[ManagedServer] = []
        for key in options.servers:
            server = start_server(KINDS[key], model or "", options.batching, env, options.log_dir)
            stack.callback(_stop, server, progress)
            servers.append(server)
            progress.note(f"started {server.kind.label} (pid {server.pid}) on {server.url}")
        servers.extend(attach(url, name) for name, url in options.urls)
        for server in servers:
            server.wait_ready(options.ready_timeout)
            if options.model_name and not server.process:
                server.model_name = options.model_name
        yield servers


def _stop(server: ManagedServer, progress: ProgressSink) -> None:
    code = server.stop()
    progress.note(f"stopped {server.kind.label} (pid {server.pid}, exit status {code})")


def run(options: RunOptions, progress: ProgressSink) -> RunResult:
    """Run the suite of ``options`` against every server; stop what was started."""
    model = resolve_model(options)
    result = RunResult(
        started=environment.now(),
        environment={},
        batching=dataclasses.asdict(options.batching),
        sampling="greedy (temperature 0)"
        if options.sampling_seed is None
        else f"temperature 0.8, seed {options.sampling_seed} + request index",
    )
    with started_servers(options, model, progress) as servers:
        result.environment = {
            "machine": environment.machine(),
            "versions": environment.versions(),
            "git_commit": environment.git_commit(REPO),
            "model": environment.model_facts(model),
            "blas_preload": options.preload,
        }
        result.servers = [_info(server) for server in servers]
        anyio.run(_measure, options, servers, result, progress)
        result.environment["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    result.finished = environment.now()
    return result


async def _measure(
    options: RunOptions, servers: list[ManagedServer], result: RunResult, progress: ProgressSink
) -> None:
    for server in servers:
        load = await _send(options, server, warmup(options.suite), progress)
        if not any(outcome.ok for outcome in load.outcomes):
            raise ServerFailed(
                f"{server.kind.label} failed every warm-up request:\n{server.log_tail()}"
            )
    for index, scenario in enumerate(build_suite(options.suite)):
        loads: dict[str, list[Load]] = {server.kind.key: [] for server in servers}
        for round_ in range(options.rounds):
            # ABBA...: a drift in the machine's load falls on every server alike.
            order = servers if (index + round_) % 2 == 0 else servers[::-1]
            for server in order:
                label = f"round {round_ + 1}/{options.rounds}" if options.rounds > 1 else ""
                load = await _send(options, server, scenario, progress, label)
                loads[server.kind.key].append(load)
        result.scenarios.append(
            ScenarioResult(
                name=scenario.name,
                group=scenario.group,
                description=scenario.description,
                concurrency=scenario.concurrency,
                max_tokens=scenario.max_tokens,
                requests=scenario.requests * options.rounds,
                servers={key: summarize(Load.merge(runs)) for key, runs in loads.items()},
            )
        )


async def _send(
    options: RunOptions,
    server: ManagedServer,
    scenario: Scenario,
    progress: ProgressSink,
    label: str = "",
) -> Load:
    bodies = scenario.bodies(server.model_name, options.sampling_seed)
    description = " · ".join(filter(None, (scenario.name, server.kind.label, label)))
    on_outcome = progress.begin(description, len(bodies))
    cpu_before = server.cpu_seconds()
    try:
        load = await run_load(
            Target.from_url(server.url),
            bodies,
            scenario.concurrency,
            timeout=options.timeout,
            on_outcome=on_outcome,
        )
    finally:
        progress.end()
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        load.server_cpu_seconds = cpu_after - cpu_before
    return load


def _info(server: ManagedServer) -> ServerInfo:
    return ServerInfo(
        key=server.kind.key,
        label=server.kind.label,
        url=server.url,
        command=[environment.without_paths(part) for part in server.command],
        model_name=server.model_name,
        blas=server.blas(),
        started_here=server.process is not None,
    )
