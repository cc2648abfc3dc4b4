"""``invsolve benchmark matrix``: every method x benchmark task on real images (parser and run)."""

from __future__ import annotations

import argparse
import sys

from invsolve.benchmarks.images import benchmark_images
from invsolve.benchmarks.matrix import MatrixConfig, run_matrix
from invsolve.benchmarks.matrix_report import markdown_table, write_report
from invsolve.benchmarks.prior_spec import DTYPES, PriorSpec
from invsolve.benchmarks.tasks import TASK_PRESETS
from invsolve.commands._arguments import name_list, parse_key_values, resolve_device

DEFAULT_OUT = "benchmark-matrix"


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prior``, ``--device``, ``--dtype``, ``--compile`` and ``--channels-last``."""
    parser.add_argument("--prior", default="natural-64", help="bundled name, diffusers folder or ADM checkpoint "
                        "(default natural-64)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="network precision; the sampler state stays float32 (default float32)")
    parser.add_argument("--compile", action="store_true",
                        help="run the network under torch.compile (falls back to eager with a warning)")
    parser.add_argument("--channels-last", action="store_true", help="network weights and inputs channels-last")


def prior_spec(args: argparse.Namespace) -> PriorSpec:
    """The prior the flags ask for, on the resolved device."""
    return PriorSpec(args.prior, str(resolve_device(args.device)), args.dtype, args.compile, args.channels_last)


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "matrix",
        help="every method x task (blur, motion blur, SR x4, box and random inpainting) on real images",
        description=(
            "Run every method with its defaults on the benchmark tasks (operator presets gauss61, motion61, sr4, "
            "box128 scaled to the image size, random70; noise 0.05) on the held-out photo crops (or the demo "
            "image, or --images) and score PSNR, SSIM and LPIPS (when its weights are present) against the "
            "no-learning estimate. Writes matrix.md and matrix.json into --out and prints the tables."
        ),
    )
    parser.add_argument("--methods", type=name_list, default=None,
                        help="methods, comma-separated (default: every method of the prior's kind)")
    parser.add_argument("--tasks", type=name_list, default=None,
                        help=f"tasks, comma-separated (default: {','.join(TASK_PRESETS)})")
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default 64)")
    parser.add_argument("--images", nargs="+", default=None, metavar="PATH",
                        help="image files or folders, 'heldout' (default: the bundled prior's held-out photo "
                             "crops, or the demo image outside a source checkout) or 'demo'")
    parser.add_argument("--count", type=int, default=None, help="number of images (default 4; --quick 1)")
    parser.add_argument("--task-count", action="append", default=[], metavar="TASK=N",
                        help="images for one task instead of --count (the first N), repeatable")
    parser.add_argument("--steps", action="append", default=[], metavar="METHOD=N",
                        help="steps of one method instead of its default, repeatable")
    parser.add_argument("--noise-sigma", type=float, default=None, help="measurement noise (default: the presets' 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of masks, kernels, noise and samplers")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    add_prior_arguments(parser)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for matrix.md and matrix.json (default ./{DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 32 px, one image, 4 steps, ddrm and diffpir unless --methods")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> MatrixConfig:
    """``--quick`` or the defaults, then the explicit flags."""
    config = MatrixConfig.quick(args.methods) if args.quick else MatrixConfig(methods=args.methods)
    if args.tasks:
        config.tasks = args.tasks
    if args.size is not None:
        config.size = args.size
    config.noise_sigma = args.noise_sigma
    config.seed = args.seed
    config.lpips = config.lpips and not args.no_lpips
    steps = parse_key_values(args.steps, "--steps")
    if any(not isinstance(n, int) or isinstance(n, bool) for n in steps.values()):
        raise ValueError(f"--steps expects METHOD=N with an integer N, got {args.steps}")
    config.steps.update(steps)
    config.counts = parse_key_values(args.task_count, "--task-count")
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    count = args.count or (1 if args.quick else 4)
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    config.counts = {task: config.counts.get(task, count) for task in config.tasks}
    count = max(config.counts.values())
    images = benchmark_images(args.images, config.size, count)
    spec = prior_spec(args)
    prior = spec.load()
    label = spec.label() + (f", {prior.status}" if args.compile else "")
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_matrix(config, prior, images, prior_name=label, log=log,
                        on_progress=lambda partial: write_report(partial, args.out))
    markdown, data = write_report(report, args.out)
    print(markdown_table(report), end="")
    print(f"wrote {markdown} and {data}")
    return 0
