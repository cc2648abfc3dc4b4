"""Run every pixel-space method on an accelerator and report what breaks.

The problem is the demo's: the bundled example image blurred by a 61x61 Gaussian
(std 3, circular boundary) with noise 0.05, restored with the bundled prior
``natural-64`` (clamped, started at sigma 10). Each method runs once in float32
with ``--steps`` steps; ``--dtypes`` names the extra precisions in which the
demo's default method also runs. Prints one Markdown row per run: PSNR of the
restoration, wall-clock seconds, denoiser calls and peak accelerator memory, or
the error. The exit status is the number of runs that failed.

    python scripts/check_device.py --device cuda
"""

from __future__ import annotations

import argparse
import time
import traceback

import torch

import operators
from invsolve import io, methods, solve
from invsolve.commands._arguments import resolve_device
from invsolve.commands.demo import BLUR, DEFAULT_METHOD, DEMO_PRIOR, NOISE_SIGMA, START_SIGMA, demo_image_path
from invsolve.metrics import psnr
from priors import load_prior
from priors.clipped import ClippedPrior

LATENT_ONLY = {"latent_dps", "psld", "resample"}
#: Smaller than the paper's 1,024 particles, so the check stays short.
OPTIONS = {"enkg": {"ensemble_size": 64}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtypes", nargs="*", default=["float16", "bfloat16"])
    return parser.parse_args()


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def run_once(method: str, dtype: torch.dtype, steps: int, device: torch.device) -> str:
    """One restoration; a Markdown row with its numbers."""
    clean = io.load_image(demo_image_path()).to(device)
    operator = operators.build("gaussian_blur", **BLUR)
    measurement = operator.measure(clean, NOISE_SIGMA, generator=torch.Generator(device).manual_seed(1))
    prior = ClippedPrior(load_prior(DEMO_PRIOR, device=device, dtype=dtype), sigma_max=START_SIGMA)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = solve(measurement, operator, prior, method=method, steps=steps, seed=0, noise_sigma=NOISE_SIGMA,
                   progress=False, **OPTIONS.get(method, {}))
    restored = result.mean.float().clamp(-1, 1)
    seconds = time.perf_counter() - start
    if restored.device.type != device.type:
        raise RuntimeError(f"the restoration came back on {restored.device}, not {device}")
    if not torch.isfinite(restored).all():
        raise RuntimeError("the restoration has non-finite values")
    return (f"| {method} | {str(dtype).removeprefix('torch.')} | {psnr(measurement, clean).item():.2f} | "
            f"{psnr(restored, clean).item():.2f} | {seconds:.2f} | {result.nfe:.0f} | {peak_memory_mib(device):.0f} |")


def main() -> int:
    args = parse_args()
    device = resolve_device(args.device)
    runs = [(name, torch.float32) for name in sorted(methods()) if name not in LATENT_ONLY]
    runs += [(DEFAULT_METHOD, getattr(torch, name)) for name in args.dtypes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.steps} steps")
    print("| method | dtype | measurement PSNR | restoration PSNR | seconds | NFE | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for method, dtype in runs:
        try:
            print(run_once(method, dtype, args.steps, device), flush=True)
        except Exception as error:  # report every failure, keep going
            failures += 1
            print(f"| {method} | {dtype} | FAILED: {type(error).__name__}: {error} |", flush=True)
            traceback.print_exc()
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
