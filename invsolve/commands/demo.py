"""``invsolve demo``: deblur the bundled example image with the bundled prior.

The example (``assets/images/chelsea-128.png``, a photograph the bundled prior
``natural-64`` never saw in training) is blurred by a 61x61 Gaussian kernel of
std 3 with circular boundaries, and Gaussian noise of std 0.05 (on [-1, 1]) is
added.  The restoration is the mean of a few posterior samples (a Monte Carlo
estimate of the MMSE estimate, which maximises expected PSNR), drawn by DDRM with
its official defaults (eta 0.85, strided timesteps) and two demo settings tuned on
the held-out tuning crops and stated as such: 20 steps over the levels up to
sigma 10 (:class:`priors.ClippedPrior`, which also clamps the denoiser to [-1, 1])
and the mean of 4 samples.  ΠGDM, the demo's method before its official update
rule landed, amplifies this noise through ``A^+`` (its code assumes noiseless
measurements) and is no longer the default.  One PNG, measurement | restoration |
ground truth, is written and the PSNR / SSIM and the time are printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from invsolve.commands._arguments import parse_key_values, resolve_device, whole_number
from invsolve.validation import MAX_STEPS

DEMO_IMAGE = "chelsea-128.png"
DEMO_PRIOR = "natural-64"
BLUR = {"kernel_size": 61, "sigma": 3.0, "padding": "circular"}
NOISE_SIGMA = 0.05
#: The measurement noise uses ``seed + MEASUREMENT_SEED_OFFSET``, the sampler ``seed``.
MEASUREMENT_SEED_OFFSET = 1
DEFAULT_METHOD = "ddrm"
DEFAULT_STEPS = 20
DEFAULT_SAMPLES = 4
#: Largest noise level the samplers start from (see :class:`priors.ClippedPrior`).
START_SIGMA = 10.0
#: Hyperparameters tuned for this problem (held-out tuning crops, scripts/quality_bar.py).
TUNED_OPTIONS: dict[str, dict[str, float]] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="deblur a bundled example photo with the bundled prior (no download needed)",
        description=(
            "Blur the bundled example image (Gaussian 61x61, std 3, noise 0.05), restore it with the "
            f"bundled prior {DEMO_PRIOR!r} and write measurement | restoration | ground truth as one PNG."
        ),
    )
    parser.add_argument("--method", default=DEFAULT_METHOD, help=f"sampling method (default {DEFAULT_METHOD})")
    parser.add_argument(
        "--steps", type=whole_number(1, MAX_STEPS), default=DEFAULT_STEPS, help=f"sampler steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--samples", type=whole_number(1), default=DEFAULT_SAMPLES,
        help=f"posterior samples drawn as one batch; the restoration is their mean (default {DEFAULT_SAMPLES})",
    )
    parser.add_argument(
        "--method-arg", action="append", default=[], metavar="KEY=VALUE",
        help="method hyperparameter, repeatable; overrides the demo's tuned values",
    )
    parser.add_argument("--output", "-o", default="demo.png", metavar="OUT.png", help="where to write (default demo.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and the sampler (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def demo_image_path() -> Path:
    """The bundled example image."""
    from priors.bundled import assets_root

    path = assets_root() / "images" / DEMO_IMAGE
    if not path.is_file():
        raise FileNotFoundError(f"the demo image {str(path)!r} is missing; reinstall invsolve")
    return path


def run(args: argparse.Namespace) -> int:
    import operators
    from invsolve import io, solve
    from invsolve.metrics import psnr, ssim
    from invsolve.samplers import method_class
    from invsolve.validation import check_method_options
    from priors import load_prior
    from priors.clipped import ClippedPrior

    options = {**TUNED_OPTIONS.get(args.method, {}), **parse_key_values(args.method_arg, "--method-arg")}
    options = check_method_options(method_class(args.method), options)
    output = io.check_output_path(args.output)
    device = resolve_device(args.device)

    start = time.perf_counter()
    clean = io.load_image(demo_image_path()).to(device)
    operator = operators.build("gaussian_blur", **BLUR)
    generator = torch.Generator(device=device).manual_seed(args.seed + MEASUREMENT_SEED_OFFSET)
    measurement = operator.measure(clean, NOISE_SIGMA, generator=generator)
    prior = ClippedPrior(load_prior(DEMO_PRIOR, device=device), sigma_max=START_SIGMA)
    result = solve(
        measurement, operator, prior, method=args.method, steps=args.steps, seed=args.seed,
        noise_sigma=NOISE_SIGMA, num_samples=args.samples, progress=not args.quiet, **options,
    )
    restored = result.mean.clamp(-1, 1)
    io.side_by_side([measurement, restored, clean], output)
    seconds = time.perf_counter() - start

    print(f"demo: Gaussian blur 61x61 std 3 + noise {NOISE_SIGMA}, prior {DEMO_PRIOR}, "
          f"{result.method} {args.steps} steps, mean of {args.samples} samples ({result.nfe:.0f} denoiser calls each)")
    for label, image in (("measurement", measurement), ("restoration", restored)):
        print(f"  {label:<12} PSNR {psnr(image, clean).item():6.2f} dB   SSIM {ssim(image, clean).item():.3f}")
    print(f"  time {seconds:.1f} s (sampling {result.seconds:.1f} s); wrote {output} "
          "(measurement | restoration | ground truth)")
    return 0
