"""One cell of the speed benchmark in its own process: ``python -m invsolve.benchmarks.speed_cell SPEC``.

``SPEC`` is the JSON of the cell (method, task, size, batch, steps, seed, repeats, options,
what to ``measure``), the prior (:class:`~invsolve.benchmarks.prior_spec.PriorSpec` fields)
and ``threads``; the last line of standard output is the cell's JSON record.
:mod:`invsolve.benchmarks.isolation` starts it.
"""

from __future__ import annotations

import json
import sys

import torch

from invsolve.benchmarks.prior_spec import PriorSpec
from invsolve.benchmarks.speed import MEASURES, measure_cell


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    threads = spec.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    prior = PriorSpec(**spec.pop("prior")).load()
    spec["measure"] = tuple(spec.get("measure", MEASURES))
    print(json.dumps(measure_cell(prior, **spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
