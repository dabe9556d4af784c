"""The ``morpho`` command.

Each layer registers its subcommands from a light module (argparse only); the work itself is
imported when a command runs, so ``morpho fit-ageing`` never loads ONNX Runtime.
Errors the toolkit raises on purpose are printed as one line; set ``MORPHO_DEBUG=1`` for the
traceback of anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from morphometry import __version__
from morphometry.errors import MorphometryError

# Modules with a ``register(subparsers)`` function, in the order commands appear in --help.
COMMAND_MODULES = (
    "segment.commands",
    "segment.synthesis.cli",
    "segment.training.cli",
    "analysis.ageing_cli",
    "analysis.evaluation_cli",
    "reports.commands",
    "morphometry.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morpho",
        description="Segment clinical brain MRI with SynthSeg+ and analyse regional volumes.",
    )
    parser.add_argument("--version", action="version", version=f"morphometry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MorphometryError as exc:
        print(f"morpho {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"morpho {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MORPHO_DEBUG"):
            raise
        print(f"morpho {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(set MORPHO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
