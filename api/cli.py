"""The ``troupe`` command line.

Subcommands arrive with the issues that build them; until the HTTP front door
lands, ``troupe serve`` says so and exits successfully, so that the README's
first command already works from a clean clone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``troupe`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        print(NOT_READY)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
