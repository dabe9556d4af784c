"""The ``morpho`` command: a thin layer over the Python API.

One module per command (``morphometry.cli.<command>``, dashes as underscores), each with
``register(subparsers)`` and the handlers it sets. Registration imports argparse-level code only;
the work is imported when a command runs, so ``morpho fit-ageing`` never loads ONNX Runtime.
Errors the toolkit raises on purpose are printed as one line, with a setting's name replaced by
its flag (``FLAGS`` of the command's module); ``MORPHO_DEBUG=1`` shows the traceback of
anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from morphometry import __version__
from morphometry.errors import MorphometryError
from morphometry.progress import configure_logging

COMMANDS = ("segment", "synthseg", "models", "simulate_cohort", "train", "fit_ageing", "norms", "evaluate",
            "silver", "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morpho",
        description="Segment clinical brain MRI with SynthSeg+ and analyse regional volumes.",
    )
    parser.add_argument("--version", action="version", version=f"morphometry-mri {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity", default=0,
                      help="also print debugging messages")
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                      help="print warnings and errors only (no progress)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"morphometry.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except MorphometryError as exc:
        flag = getattr(args, "flags", {}).get(exc.setting)
        print(f"morpho {args.command}: error: {exc.renamed(flag) if flag else exc}", file=sys.stderr)
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

