"""``troupe bench`` / ``python -m benchmarks``: the command line of the harness.

Exit status: 0 when the run completed (missed targets included: they are
reported, not failures), 1 when a server could not be started or served no
warm-up request, 2 for bad arguments, 130 when interrupted (Ctrl-C or SIGTERM;
every server it started has been stopped by then).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.harness import environment
from benchmarks.harness.runner import RunOptions, RunResult, run
from benchmarks.harness.scenarios import GROUPS, SuiteConfig
from benchmarks.harness.servers import KINDS, Batching, ServerFailed

INTERRUPTED = 130
QUICK = SuiteConfig(
    levels=(1, 4),
    single_requests=3,
    single_max_tokens=8,
    sweep_max_tokens=8,
    sweep_requests_per_client=1,
    sweep_min_requests=4,
    prefix_words=60,
    prefix_requests=4,
    prefix_concurrency=2,
    prefix_max_tokens=4,
    long_words=120,
    long_requests=2,
    long_concurrency=2,
    long_max_tokens=4,
    warmup_requests=2,
)


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    """The harness's options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve one model with mlx-troupe and mlx_lm.server (same install, same "
        "BLAS), send each the same streaming chat load, and report the figures side by side "
        "as a table, JSON, Markdown and PNG charts.",
    )
    parser.add_argument(
        "--model", help="model directory, GGUF file or hub id (default: the embedded model)"
    )
    parser.add_argument(
        "--size", choices=("tiny", "small"), default="tiny", help="embedded model size"
    )
    parser.add_argument(
        "--servers",
        default="troupe,mlx_lm",
        help=f"servers to start, comma-separated, of {', '.join(KINDS)} (default: troupe,mlx_lm; "
        "'instant' answers at once: the load generator's ceiling); empty with --url",
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="also measure a running server (repeatable); it is neither started nor stopped",
    )
    parser.add_argument("--model-name", help="the model field sent to --url servers")
    parser.add_argument(
        "--scenarios", default=",".join(GROUPS), help=f"groups to run (default: {','.join(GROUPS)})"
    )
    parser.add_argument(
        "--levels", type=int, nargs="+", help="concurrency levels (default: 1 4 16 64)"
    )
    parser.add_argument("--max-tokens", type=int, help="max_tokens of single and sweep requests")
    parser.add_argument("--requests-per-client", type=int, help="sweep requests per client")
    parser.add_argument(
        "--rounds",
        type=int,
        help="runs of each scenario per server, in alternating order (default: 4, quick: 1)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny suite: a smoke test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default: 0)")
    parser.add_argument(
        "--sampling-seed",
        type=int,
        help="sample at temperature 0.8 with seed N + request index instead of greedy (note: "
        "mlx_lm.server 0.32 does not batch seeded requests)",
    )
    parser.add_argument(
        "--decode-batch", type=int, default=32, help="sequences decoded together by both servers"
    )
    parser.add_argument(
        "--blas",
        default="auto",
        help="LD_PRELOAD for every server: auto (as troupe serve --blas auto), none, or a path",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--out", type=Path, help="output folder (default: bench-results/STAMP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _urls(values: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for number, value in enumerate(values, start=1):
        name, sep, url = value.partition("=")
        pairs.append(
            (name, url) if sep and not name.startswith("http") else (f"url{number}", value)
        )
    return pairs


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    """Checked run options from parsed arguments (``parser.error`` on a bad one)."""
    servers = [name for name in args.servers.split(",") if name]
    if unknown := [name for name in servers if name not in KINDS]:
        parser.error(f"unknown server {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    groups = [name for name in args.scenarios.split(",") if name]
    if unknown := [name for name in groups if name not in GROUPS]:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if not servers and not args.url:
        parser.error("nothing to measure: give --servers or --url")
    suite = QUICK if args.quick else SuiteConfig()
    changes: dict[str, Any] = {"groups": tuple(groups), "seed": args.seed}
    if args.levels:
        changes["levels"] = tuple(args.levels)
    if args.max_tokens:
        changes |= {"single_max_tokens": args.max_tokens, "sweep_max_tokens": args.max_tokens}
    if args.requests_per_client:
        changes["sweep_requests_per_client"] = args.requests_per_client
    out = args.out or Path("bench-results") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    preload = {"auto": environment.default_preload(), "none": None}.get(args.blas, args.blas)
    if preload and not Path(preload).exists():
        parser.error(f"--blas {preload}: no such file")
    return RunOptions(
        servers=servers,
        urls=_urls(args.url),
        model=args.model,
        size=args.size,
        model_name=args.model_name,
        batching=Batching(decode=args.decode_batch),
        preload=preload,
        suite=dataclasses.replace(suite, **changes),
        timeout=args.timeout,
        sampling_seed=args.sampling_seed,
        rounds=args.rounds or (1 if args.quick else 4),
        log_dir=out / "logs",
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run the harness; return the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    options = options_from(args, parser)
    out = options.log_dir.parent
    try:
        from rich.console import Console  # noqa: PLC0415

        from benchmarks.harness.terminal import RichProgress, print_summary  # noqa: PLC0415
    except ImportError:
        print(f"{prog}: needs the bench extra: pip install 'mlx-troupe[bench]'", file=sys.stderr)
        return 1
    console = Console(highlight=False)
    if not console.is_terminal:  # a log file or pipe: wide enough for the table
        console = Console(highlight=False, width=150)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops servers like Ctrl-C
    try:
        with RichProgress(console, enabled=not args.no_progress) as progress:
            result = run(options, progress)
    except KeyboardInterrupt:
        console.print(f"{prog}: interrupted; every server it started has been stopped")
        return INTERRUPTED
    except ServerFailed as exc:
        console.print(f"{prog}: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    words = sys.argv[1:] if argv is None else argv
    command = " ".join([prog, shlex.join(map(environment.without_paths, words))]).strip()
    write_outputs(result, out, command)
    print_summary(console, result)
    console.print(f"wrote {out}/results.json, report.md and charts")
    return 0


def write_outputs(result: RunResult, out: Path, command: str) -> None:
    """Targets into ``result``, then results.json, the charts and report.md into ``out``."""
    from benchmarks.harness.report import evaluate, markdown, write_json  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    result.targets = evaluate(result)
    write_json(result, out / "results.json")
    try:
        from benchmarks.harness.charts import write_charts  # noqa: PLC0415

        charts = write_charts(result, out)
    except ImportError:
        charts = []
        print("no charts: matplotlib is not installed (the bench extra)", file=sys.stderr)
    (out / "report.md").write_text(markdown(result, charts, command))
