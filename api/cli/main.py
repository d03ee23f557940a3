"""The ``troupe`` command line.

``troupe serve`` runs the OpenAI-compatible server (after checking every
setting, exit status 2 with the full list if any is wrong). ``troupe make-model`` writes the
embedded random-weight Llama to a directory. ``troupe check-config`` reports
every problem with the settings without starting anything, and ``troupe
status`` shows a running server's supervision tree. ``troupe bench`` runs the
serving benchmark against ``mlx_lm.server`` (:mod:`benchmarks.harness`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from api.cli.status_table import add_status_arguments, status_command
from api.config.checks import load_and_check
from api.config.diagnostics import format_problems, has_errors
from api.config.flags import add_arguments, overrides_from_args

log = logging.getLogger("troupe.cli")

# The names make-model accepts; kept here so that parsing (and --help) never
# imports MLX. A test checks they match actors.model.PRESETS.
MODEL_SIZES = ("tiny", "small")
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="troupe", description="An actor-based LLM inference runtime on MLX."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible server",
        description="Serve the model (the embedded default unless --model is given) on "
        "hypercorn. Settings: defaults < TOML file < TROUPE_* environment < flags. "
        "SIGTERM/SIGINT drain in-flight requests, then exit 0.",
    )
    add_arguments(serve)
    make = commands.add_parser(
        "make-model",
        help="write the embedded random-weight Llama model to a directory",
        description="Write a small Llama with random weights and a real tokenizer, "
        "loadable by mlx_lm.load. The same size and seed always give the same files.",
    )
    make.add_argument("--size", choices=MODEL_SIZES, default="tiny", help="default: tiny")
    make.add_argument("--seed", type=int, default=0, help="seeds the weights (default: 0)")
    make.add_argument("--force", action="store_true", help="replace a non-empty DEST")
    make.add_argument("dest", metavar="DEST", type=Path, help="the directory to create")
    check = commands.add_parser(
        "check-config",
        help="check the settings without starting anything",
        description="Read the settings as serve would (defaults < TOML file < TROUPE_* "
        "environment < flags), check them, and list every problem. Exit status: 0 if "
        "the server could start (warnings allowed), 2 otherwise.",
    )
    add_arguments(check)
    status = commands.add_parser(
        "status",
        help="show a running server's supervision tree",
        description="Fetch GET URL/v1/supervisor and show each actor's state, restarts, "
        "last failure, mailbox and uptime. Exit status 1 if the server cannot be read.",
    )
    add_status_arguments(status)
    # Listed here for --help; main() hands its arguments to the harness unparsed.
    commands.add_parser(
        "bench",
        help="benchmark serving side by side with mlx_lm.server (troupe bench --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``troupe`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # Imported here: the harness and its dependencies load only for benchmarking.
        from benchmarks.harness.cli import main as bench_main  # noqa: PLC0415

        return bench_main(arguments[1:], prog="troupe bench")
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        # Only the console script restarts itself: a caller's own process is never replaced.
        return serve_command(args, restart_as=arguments if argv is None else None)
    if args.command == "make-model":
        return make_model_command(args.dest, args.size, args.seed, force=args.force)
    if args.command == "check-config":
        return check_config_command(args)
    if args.command == "status":
        return status_command(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first


def make_model_command(dest: Path, size: str, seed: int, *, force: bool) -> int:
    """Run ``troupe make-model``; a failure is one line on stderr and status 2."""
    # Imported here: MLX and mlx_lm take a second to load, which serve must not pay.
    from actors.model.embedded import PRESETS, DestinationExists, make_model  # noqa: PLC0415

    try:
        path = make_model(dest, size, seed, overwrite=force)
    except DestinationExists as exc:
        hint = " (use --force to replace it)" if exc.errno == errno.ENOTEMPTY else ""
        return _fail(f"{dest}: {exc.strerror}{hint}")
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {dest}: {exc.strerror or type(exc).__name__}")
    count = PRESETS[size].num_parameters
    print(f"wrote the {size} model ({count:,} parameters, seed {seed}) to {path}")
    return 0


def serve_command(args: argparse.Namespace, restart_as: Sequence[str] | None = None) -> int:
    """Run ``troupe serve``: check every setting first, then serve until stopped.

    With ``restart_as`` (the command's arguments), the process first restarts
    itself with an optimised BLAS preloaded when ``--blas`` asks for one.
    """
    settings, problems = load_and_check(overrides_from_args(args), os.environ, args.config)
    if has_errors(problems):
        print("troupe serve: the configuration has problems:", file=sys.stderr)
        print(format_problems(problems), file=sys.stderr)
        return USAGE_ERROR
    from api.cli.blas import describe_blas, restart_with_blas  # noqa: PLC0415
    from api.http.logs import configure_logging  # noqa: PLC0415 - keeps --help light

    if restart_as is not None:
        restart_with_blas(settings.blas, restart_as)
    configure_logging(settings.log_level, settings.log_format)
    if sys.platform.startswith("linux"):
        log.info(describe_blas(), extra={"event": "blas"})
    for problem in problems:  # warnings only by now: logged like every other line
        log.warning(
            "configuration: %s",
            problem.message,
            extra={"event": "config_warning", "setting": problem.setting},
        )
    if settings.ray:
        from api.replicas.launch import serve_on_ray  # noqa: PLC0415 - Ray is an extra

        code = serve_on_ray(settings)
    else:
        from api.cli.serve import serve  # noqa: PLC0415 - MLX loads only for serving
        from api.config.toml_file import ConfigFile  # noqa: PLC0415

        code = serve(settings, ConfigFile.of(args.config, os.environ, overrides_from_args(args)))
    # Everything is stopped and joined by now. Skip the interpreter's teardown:
    # MLX's native threads occasionally abort it ("terminate called without an
    # active exception"), which would turn a clean exit 0 into SIGABRT.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def check_config_command(args: argparse.Namespace) -> int:
    """Run ``troupe check-config``: every problem listed, status 0 (warnings only) or 2."""
    _, problems = load_and_check(overrides_from_args(args), os.environ, args.config)
    if has_errors(problems):
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"troupe check-config: {count} in the configuration:", file=sys.stderr)
        print(format_problems(problems), file=sys.stderr)
        return USAGE_ERROR
    print("configuration OK")
    if problems:
        print(format_problems(problems))
    return 0


def _fail(message: str) -> int:
    print(f"troupe make-model: error: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
