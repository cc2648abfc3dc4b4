"""The ``invsolve`` command line: ``invsolve restore``, ``invsolve list`` and friends.

Subcommands live in :mod:`invsolve.commands`, one module each.  Expected errors
(bad input files, unknown names, shape mismatches) end the program with one
line on stderr, ``invsolve: error: ...``, and exit status 2; ``--debug`` prints
the traceback as well.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from invsolve.commands import command_modules

#: Errors that mean "the input is wrong", reported in one line rather than a traceback.
EXPECTED_ERRORS = (ValueError, TypeError, OSError)
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a single line on stderr (exit status 2)."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module of :mod:`invsolve.commands`."""
    parser = OneLineParser(
        prog="invsolve",
        description="Solve imaging inverse problems with pretrained diffusion models as priors.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return _exit_status(stop.code)
    try:
        return int(args.func(args))
    except EXPECTED_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"invsolve: error: {_one_line(err)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("invsolve: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
