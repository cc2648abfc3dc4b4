"""Time operator calls of the benchmark presets: forward + adjoint (DAPS's inner loop), pinv, prox.

Usage::

    OMP_NUM_THREADS=2 python scripts/benchmark_operators.py --presets gauss61 motion61 --sizes 64 128 256

Each figure is the fastest of ``--rounds`` rounds (wall-clock and process CPU time per
call, float32, batch 1, 3 channels), which filters out other processes on a shared
machine; caches are warmed by one call first.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import operators


def fastest(call: Callable[[], object], repeats: int, rounds: int) -> tuple[float, float]:
    """``(wall, cpu)`` seconds per call, the minimum over ``rounds`` rounds of ``repeats`` calls."""
    call()
    wall = cpu = float("inf")
    for _ in range(rounds):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            call()
        wall = min(wall, (time.perf_counter() - start_wall) / repeats)
        cpu = min(cpu, (time.process_time() - start_cpu) / repeats)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gauss61", "motion61"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--solves", action="store_true", help="also time pinv(y) and prox(0, y, rho=0.01)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | size | forward + adjoint ms (wall / CPU) |" + (" pinv ms | prox ms |" if args.solves else ""))
    print("|---|---:|---:|" + ("---:|---:|" if args.solves else ""))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in args.presets:
            op = operators.preset(name).build(seed=0)
            for size in args.sizes:
                x = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
                y = op(x)
                repeats = max(3, 300_000 // size**2)
                wall, cpu = fastest(lambda: op.adjoint(op(x)), repeats, args.rounds)
                row = f"| {name} | {size} | {wall * 1e3:.2f} / {cpu * 1e3:.2f} |"
                if args.solves:
                    pinv, _ = fastest(lambda: op.pinv(y), 1, 3)
                    prox, _ = fastest(lambda: op.prox(torch.zeros_like(x), y, 0.01), 1, 3)
                    row += f" {pinv * 1e3:.1f} | {prox * 1e3:.1f} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
