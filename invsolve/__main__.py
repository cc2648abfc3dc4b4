"""``python -m invsolve``: the same command line as ``invsolve``."""

import sys

from invsolve.cli import main

sys.exit(main())
