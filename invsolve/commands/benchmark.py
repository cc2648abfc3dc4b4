"""``invsolve benchmark posterior``: every method against exact Gaussian-mixture posteriors."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from invsolve.benchmarks.posterior import BenchmarkConfig, run_posterior_benchmark
from invsolve.benchmarks.report import markdown_table, write_report
from invsolve.commands._arguments import int_list, name_list, parse_key_values
from invsolve.commands._benchmark_matrix import add_parser as add_matrix_parser
from invsolve.commands._benchmark_speed import add_parser as add_speed_parser

DEFAULT_OUT = "benchmark-posterior"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="benchmarks: exact posteriors (posterior), methods x tasks (matrix), speed and memory (speed)",
        description="Benchmarks: exact Gaussian-mixture posteriors, the methods x tasks matrix, speed and memory.",
    )
    kinds = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    posterior = kinds.add_parser(
        "posterior",
        help="sliced Wasserstein distance of every method to exact posteriors (MCGdiff mixture problem)",
        description=(
            "Run every registered method that works with a matrix operator on the Gaussian-mixture "
            "problem of MCGdiff (25 components, d dimensions, d_y measurements) and compare its samples "
            "with exact posterior samples by the sliced Wasserstein-1 distance. Writes posterior.md "
            "and posterior.json into --out and prints the table."
        ),
    )
    posterior.add_argument("--dims", type=int_list, default=None, help="dimensions d, comma-separated (default 8,80)")
    posterior.add_argument("--dys", type=int_list, default=None,
                           help="measurement dimensions d_y, comma-separated (default 1,2,4)")
    posterior.add_argument("--seeds", type=int_list, default=None, help="problem seeds (default 0,1,2)")
    posterior.add_argument("--methods", type=name_list, default=None,
                           help="methods, comma-separated (default: every registered method)")
    posterior.add_argument("--samples", type=int, default=None, help="samples per method and draw (default 1000)")
    posterior.add_argument("--directions", type=int, default=None, help="random directions of the SW distance (default 500)")
    posterior.add_argument("--steps", action="append", default=[], metavar="METHOD=N",
                           help="steps of one method instead of its paper value, repeatable")
    posterior.add_argument("--particles", type=int_list, default=None,
                           help="particle counts, comma-separated: run particle methods once per count (a sweep)")
    posterior.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                           help=f"folder for posterior.md and posterior.json (default ./{DEFAULT_OUT})")
    posterior.add_argument("--quick", action="store_true",
                           help="smoke test: d=8, d_y=4, one seed, 200 samples, 20 steps per method")
    posterior.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    posterior.set_defaults(func=run)
    add_matrix_parser(kinds)
    add_speed_parser(kinds)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_posterior_benchmark(config, log=log)
    markdown, data = write_report(report, args.out)
    print(markdown_table(report), end="")
    print(f"wrote {markdown} and {data}")
    return 0


def build_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The configuration the flags ask for: ``--quick`` or the defaults, then explicit flags."""
    config = BenchmarkConfig.quick(args.methods) if args.quick else BenchmarkConfig(methods=args.methods)
    overrides = {
        "dims": args.dims, "measurement_dims": args.dys, "seeds": args.seeds,
        "samples": args.samples, "directions": args.directions, "particles": args.particles,
    }
    config = dataclasses.replace(config, **{key: value for key, value in overrides.items() if value is not None})
    steps = parse_key_values(args.steps, "--steps")
    if any(not isinstance(n, int) for n in steps.values()):
        raise ValueError(f"--steps expects METHOD=N with an integer N, got {args.steps}")
    config.steps.update(steps)
    config.validate()
    return config
