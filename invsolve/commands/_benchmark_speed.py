"""``invsolve benchmark speed``: seconds, network time, overhead, operator time and peak memory per method."""

from __future__ import annotations

import argparse
import sys

from invsolve.benchmarks.speed import SpeedConfig, run_speed
from invsolve.benchmarks.speed_report import markdown_table, write_report
from invsolve.benchmarks.tasks import TASK_PRESETS
from invsolve.commands._arguments import int_list, name_list, parse_key_values
from invsolve.commands._benchmark_matrix import add_prior_arguments, prior_spec

DEFAULT_OUT = "benchmark-speed"


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "speed",
        help="seconds per solve against the network's own time (overhead), operator time, peak memory",
        description=(
            "Solve with every method and measure the seconds per solve, the network-only time of the same calls "
            "(timed in the same process before and after the solve), their ratio (overhead), the time spent in "
            "the operator and the peak memory against one network forward (+ backward). Each cell runs in its "
            "own process unless --in-process. Writes speed.md and speed.json into --out and prints the tables."
        ),
    )
    parser.add_argument("--methods", type=name_list, default=None,
                        help="methods, comma-separated (default: every method of the prior's kind)")
    parser.add_argument("--tasks", type=name_list, default=None,
                        help=f"tasks, comma-separated, from {','.join(TASK_PRESETS)} (default gaussian_blur)")
    parser.add_argument("--sizes", type=int_list, default=None, help="image sizes, comma-separated (default 64,128,256)")
    parser.add_argument("--batch", type=int, default=None, help="images per solve (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps for every method (default: each method's own)")
    parser.add_argument("--method-steps", action="append", default=[], metavar="METHOD=N",
                        help="steps of one method, repeatable (overrides --steps)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a method hyperparameter other than its default, repeatable (e.g. enkg:ensemble_size=64)")
    parser.add_argument("--repeats", type=int, default=None, help="network calls per timing block (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--in-process", action="store_true", help="run every cell in this process")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurement (on a CPU, a second process per cell)")
    parser.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop a cell's process after this long and report it as a timeout")
    parser.add_argument("--seed", type=int, default=0)
    add_prior_arguments(parser)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for speed.md and speed.json (default ./{DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 32 px, 3 steps, one timing call per block, ddrm and dps unless --methods")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> SpeedConfig:
    """``--quick`` or the defaults, then the explicit flags."""
    spec = prior_spec(args)
    config = SpeedConfig.quick(args.methods, prior=spec) if args.quick else SpeedConfig(prior=spec, methods=args.methods)
    changes = {"tasks": args.tasks, "sizes": args.sizes, "batch": args.batch, "steps": args.steps,
               "repeats": args.repeats, "threads": args.threads, "cell_timeout": args.cell_timeout}
    for name, value in changes.items():
        if value is not None:
            setattr(config, name, value)
    config.seed = args.seed
    config.isolate = not args.in_process
    config.memory = not args.no_memory
    steps = parse_key_values(args.method_steps, "--method-steps")
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in steps.values()):
        raise ValueError(f"--method-steps expects METHOD=N with a positive integer N, got {args.method_steps}")
    config.method_steps.update(steps)
    for item in args.option:
        method, sep, assignment = item.partition(":")
        if not sep or not method:
            raise ValueError(f"--option expects METHOD:KEY=VALUE, got {item!r}")
        config.method_options.setdefault(method, {}).update(parse_key_values([assignment], "--option"))
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {config.steps}")
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_speed(config, log=log, on_cell=lambda partial: write_report(partial, args.out))
    markdown, data = write_report(report, args.out)
    print(markdown_table(report), end="")
    print(f"wrote {markdown} and {data}")
    return 0
