"""Evaluate methods on a folder of images: ``python scripts/evaluate.py DATA_DIR --operator ... --prior ...``.

A thin wrapper around ``invsolve evaluate``; see ``invsolve evaluate --help``.
Shard across GPUs with ``accelerate launch scripts/evaluate.py ...``.
"""

import sys

from invsolve.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
