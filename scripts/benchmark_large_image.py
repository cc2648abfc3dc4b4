"""Seconds and peak memory of one large restoration: ``python scripts/benchmark_large_image.py``.

``invsolve demo``'s problem and settings at a photograph's size: scikit-image's
``chelsea`` photograph (held out from the bundled prior's training) centre-cropped and
resized to ``--height x --width`` (default 512 x 768), blurred by a 61 x 61 Gaussian
kernel of std 3 with circular boundaries, noise std 0.05 on [-1, 1], restored with the
demo's method and steps (``--method``, ``--steps``) and its prior (the bundled
``natural-64``, clipped to [-1, 1] and started at sigma 10), one sample by default.
The bundled prior is fully convolutional, so by default it runs on the whole image;
``--tile T`` wraps it in ``priors.Tiled`` instead (memory bounded by the tile batch).
Prints one line: time, time per step, NFE, PSNR and peak memory (CUDA: peak allocated
during the solve; CPU: the process's peak resident set size, which cannot be reset,
so run one configuration per process).  Writes no files.

On Linux, glibc keeps freed blocks in the process after its adaptive mmap threshold
has grown, so the CPU peak then overstates the memory in use; run with
``MALLOC_MMAP_THRESHOLD_=131072`` for a peak that tracks live tensors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import operators
from invsolve import io, solve
from invsolve.commands.demo import (
    BLUR,
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    DEMO_PRIOR,
    MEASUREMENT_SEED_OFFSET,
    NOISE_SIGMA,
    START_SIGMA,
)
from invsolve.evaluation.memory import peak_memory_mib, reset_peak_memory
from invsolve.metrics import psnr
from priors import ClippedPrior, Tiled, load_prior


def default_image() -> str:
    """Path of scikit-image's ``chelsea.png`` (shipped with scikit-image, no download)."""
    import skimage

    return os.path.join(skimage.data_dir, "chelsea.png")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None, help="image file (default: scikit-image's chelsea.png)")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--prior", default=DEMO_PRIOR, help=f"bundled name, folder or Hub id (default {DEMO_PRIOR})")
    parser.add_argument("--method", default=DEFAULT_METHOD, help=f"sampling method (default {DEFAULT_METHOD})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampler steps (default {DEFAULT_STEPS})")
    parser.add_argument("--samples", type=int, default=1, help="posterior samples, drawn as one batch (default 1)")
    parser.add_argument("--tile", type=int, default=None, help="tile the prior with this tile size (default: no tiling)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: a quarter of the tile)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per network call (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    prior = ClippedPrior(load_prior(args.prior, device=device), sigma_max=START_SIGMA)
    if args.tile is not None:
        prior = Tiled(prior, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size)
    clean = io.load_image(args.image or default_image(), size=(args.height, args.width)).to(device)
    operator = operators.build("gaussian_blur", **BLUR)
    y = operator.measure(clean, NOISE_SIGMA, generator=torch.Generator(device=device).manual_seed(args.seed + MEASUREMENT_SEED_OFFSET))

    reset_peak_memory(device)
    before = peak_memory_mib(device)
    start = time.perf_counter()
    result = solve(y, operator, prior, method=args.method, steps=args.steps, seed=args.seed,
                   noise_sigma=NOISE_SIGMA, num_samples=args.samples, progress=False)
    total = time.perf_counter() - start
    peak = peak_memory_mib(device)

    tiling = result.options.get("tiling")
    layout = "whole image" if tiling is None else f"tiles {tiling['tile']} overlap {tiling['overlap']} batch {tiling['batch_size']}"
    memory = "n/a" if peak is None else f"{peak:.0f} MiB (before the solve: {before:.0f} MiB)"
    print(
        f"{args.height}x{args.width}, {args.method} {args.steps} steps x {args.samples} sample(s), {layout}, {device.type} "
        f"({torch.get_num_threads()} threads): {total:.1f} s ({total / args.steps:.2f} s/step, NFE {result.nfe:g}), "
        f"PSNR {psnr(result.mean.clamp(-1, 1), clean).item():.2f} dB (measurement {psnr(y, clean).item():.2f} dB), "
        f"peak memory {memory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
