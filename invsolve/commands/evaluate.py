"""``invsolve evaluate``: compare methods on a folder of images (``accelerate launch`` shards it)."""

from __future__ import annotations

import argparse
import logging
import sys

import operators
from invsolve.commands._arguments import add_network_arguments, add_task_arguments, parse_key_values, whole_number
from invsolve.evaluation import EvaluationSettings, evaluate_folder
from invsolve.evaluation.settings import METRICS
from invsolve.validation import MAX_STEPS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate methods on a folder of images (metrics.csv, summary, grid)",
        description=(
            "Simulate y = A(x) + noise for every image of DATA_DIR (seeded by its file name and --seed), "
            "restore it with each method and a no-learning baseline, and write under OUT: the restorations, "
            "metrics.csv (PSNR, SSIM, LPIPS, NFE, seconds per image and method), errors.csv, summary.json, "
            "summary.md and grid.png. A rerun skips finished pairs. One run at a time may write OUT, which must "
            "lie outside DATA_DIR; invsolve-manifest.txt lists what it wrote. 'accelerate launch -m invsolve "
            "evaluate ...' splits the images across processes."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of PNG / JPEG images (searched recursively)")
    add_task_arguments(parser, preset_note='random masks are drawn per image from its file name and --seed, the motion kernel once from --seed')
    parser.add_argument(
        "--prior", default="natural-64", metavar="PATH_OR_ID",
        help="diffusers folder, bundled name or hub id (default: the bundled natural-64)",
    )
    parser.add_argument(
        "--methods", default=None, metavar="M1,M2",
        help="comma-separated methods (default: the one that fits the operator; see 'invsolve list')",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder; nothing is written outside it")
    parser.add_argument(
        "--size", type=whole_number(1), default=None, metavar="S",
        help="centre-crop and resize to S x S (default: the prior's size, else 256)",
    )
    parser.add_argument(
        "--limit", type=whole_number(1), default=None, metavar="N", help="only the first N images (sorted by path)"
    )
    parser.add_argument(
        "--seed", type=whole_number(0, 2**64 - 1), default=0, help="seed of the measurements and samplers (default 0)"
    )
    parser.add_argument(
        "--steps", type=whole_number(1, MAX_STEPS), default=None,
        help="sampler steps for every method (default: each method's paper value)",
    )
    parser.add_argument(
        "--metrics", default=",".join(METRICS), metavar="LIST",
        help=f"comma-separated subset of {','.join(METRICS)} (default: all)",
    )
    parser.add_argument("--lpips-net", default="vgg", choices=("vgg", "alex"), help="LPIPS backbone (default vgg)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="delete the files an earlier run recorded in OUT/invsolve-manifest.txt (nothing else) and redo everything",
    )
    parser.add_argument(
        "--device", default=None, choices=("cpu", "cuda"),
        help="device of a single process (default: CUDA when available; accelerate picks it per process)",
    )
    parser.add_argument("--grid-rows", type=whole_number(1), default=8, help="images shown in grid.png (default 8)")
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=1, metavar="B",
        help="images restored together in one solve per method (default 1); each keeps its own seed, so the "
        "results are those of B = 1 to float rounding (SMC resampling of mcgdiff / tds: equal in distribution)",
    )
    add_network_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
    if args.preset is not None and args.operator_arg:
        raise ValueError("--preset fixes the operator's arguments; leave out --operator-arg (or use --operator)")
    preset = operators.preset(args.preset) if args.preset is not None else None
    noise_sigma = args.noise_sigma if args.noise_sigma is not None else (preset.noise_sigma if preset else 0.05)
    settings = EvaluationSettings(
        data_dir=args.data_dir, out=args.out, operator=preset.operator if preset else args.operator,
        prior=args.prior, methods=None if args.methods is None else _names(args.methods), preset=args.preset,
        operator_args=dict(preset.options) if preset else parse_key_values(args.operator_arg, "--operator-arg"),
        noise_sigma=noise_sigma, size=args.size, limit=args.limit, seed=args.seed, steps=args.steps,
        metrics=tuple(_names(args.metrics)), lpips_net=args.lpips_net, overwrite=args.overwrite,
        device=args.device, grid_rows=args.grid_rows, progress=not args.quiet, batch_size=args.batch_size,
        dtype=args.dtype, compile=args.compile, channels_last=args.channels_last,
    )
    summary = evaluate_folder(settings)
    if summary is not None:
        images = summary["images"]
        failed = f", {images['failed_runs']} diverged runs in errors.csv" if images["failed_runs"] else ""
        print(
            f"evaluated {images['evaluated']} of {images['listed']} images ({images['errors']} unreadable{failed}) "
            f"with {', '.join(summary['methods'])}; wrote {args.out}/summary.md"
        )
    return 0
