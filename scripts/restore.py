"""Restore an image from the command line: ``python scripts/restore.py INPUT --operator ... --prior ...``.

A thin wrapper around ``invsolve restore``; see ``invsolve restore --help``.
"""

import sys

from invsolve.cli import main

if __name__ == "__main__":
    sys.exit(main(["restore", *sys.argv[1:]]))
