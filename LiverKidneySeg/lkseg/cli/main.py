"""Entry point of the ``lkseg`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``
(adds its parser and sets ``func``) — so subcommands import their heavy dependencies (torch,
VTK) only when they run. Errors that a user can cause (:class:`~lkseg.errors.LKSegError`) are
printed as one line without a traceback, unless ``--debug``; the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lkseg import __version__
from lkseg.errors import LKSegError

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``lkseg --help`` lists them.
COMMANDS = [
    "demo",
    "info",
    "phantom",
    "metrics",
    "segment",
    "models",
    "train",
    "refine",
    "refine_eval",
    "plan",
    "batch",
    "web",
]

log = logging.getLogger("lkseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lkseg",
        description="LiverKidneySeg: segmentation of liver, kidneys and tumours on CT, with surgical planning.",
    )
    parser.add_argument("--version", action="version", version=f"lkseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lkseg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lkseg.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except LKSegError as exc:
        if args.debug:
            raise
        print(f"lkseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lkseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print(f"lkseg {args.command}: error: out of memory", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
