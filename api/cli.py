"""The ``troupe`` command line.

Subcommands arrive with the issues that build them; until the HTTP front door
lands, ``troupe serve`` says so and exits successfully, so that the README's
first command already works from a clean clone. ``troupe make-model`` writes the
embedded random-weight Llama to a directory.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

# The names make-model accepts; kept here so that parsing (and --help) never
# imports MLX. A test checks they match actors.model.PRESETS.
MODEL_SIZES = ("tiny", "small")
USAGE_ERROR = 2

NOT_READY = (
    "mlx-troupe: the actor runtime is installed, but the HTTP server is not ready yet "
    "(it arrives with the front-door issue). Nothing was started."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="troupe", description="An actor-based LLM inference runtime on MLX."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("serve", help="run the OpenAI-compatible server")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``troupe`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        print(NOT_READY)
        return 0
    if args.command == "make-model":
        return make_model_command(args.dest, args.size, args.seed, force=args.force)
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


def _fail(message: str) -> int:
    print(f"troupe make-model: error: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
