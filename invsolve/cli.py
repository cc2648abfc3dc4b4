"""The ``invsolve`` command line: ``invsolve restore``, ``invsolve list`` and friends.

Subcommands live in :mod:`invsolve.commands`, one module each.  Expected errors
(bad input files, unknown names, shape mismatches, a diverged solve, running out
of memory) end the program with one line on stderr, ``invsolve: error: ...``, and
exit status 2; ``--debug`` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence

from invsolve.commands import command_modules

#: Errors that mean "the input is wrong", reported in one line rather than a traceback
#: (FloatingPointError covers :class:`invsolve.samplers.DivergenceError`).
EXPECTED_ERRORS = (ValueError, TypeError, OSError, FloatingPointError, MemoryError)
USAGE_ERROR = 2
#: What to change when memory runs out.
MEMORY_HINT = "out of memory; use a smaller image (--size), fewer samples or another device"


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a single line on stderr (exit status 2)."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"invsolve: error: {message} (see '{self.prog} --help')\n")


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
        with _warnings_in_one_line():
            return int(args.func(args))
    except EXPECTED_ERRORS as err:
        return _report(err, args.debug, MEMORY_HINT if isinstance(err, MemoryError) else "")
    except RuntimeError as err:
        if not _out_of_memory(err):
            raise
        return _report(err, args.debug, MEMORY_HINT)
    except KeyboardInterrupt:
        print("invsolve: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _warnings_in_one_line() -> Iterator[None]:
    """Print warnings as ``invsolve: warning: ...``, one line each, while the command runs."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"invsolve: warning: {_one_line(message)}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def _report(err: BaseException, debug: bool, hint: str) -> int:
    if debug:
        traceback.print_exc()
    message = f"{hint}: {_one_line(err)}" if hint else _one_line(err)
    print(f"invsolve: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is torch's allocator failing (CPU ``can't allocate memory`` or CUDA out of memory)."""
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
