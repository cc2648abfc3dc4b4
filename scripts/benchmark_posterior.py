"""The posterior benchmark: ``python scripts/benchmark_posterior.py [--quick] [--out DIR] ...``.

Same flags as ``invsolve benchmark posterior`` (see ``--help``): every registered
method against exact Gaussian-mixture posteriors (the MCGdiff problem), scored by
the sliced Wasserstein-1 distance; writes ``posterior.md`` and ``posterior.json``.
``--particles 64,128,256,512,1024`` runs the particle methods (mcgdiff, tds) once per count.
"""

import sys

from invsolve.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "posterior", *sys.argv[1:]]))
