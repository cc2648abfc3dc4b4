"""Cost of the latent methods on one latent prior: NFE, decoder / encoder passes and seconds per solve.

    python scripts/benchmark_latent.py PRIOR [--size 64] [--steps 50] [--methods latent_dps,psld,resample] [--threads 1]

PRIOR is a latent pipeline folder or Hub id (``load_prior``).  The measurement is a centred
box inpainting (half the side) of a smooth synthetic image with sigma_y = 0.01.
"""

from __future__ import annotations

import argparse
import math

import torch

from invsolve import solve
from operators import Inpainting
from priors import is_latent_prior, load_prior


def synthetic_image(size: int) -> torch.Tensor:
    """A smooth colour pattern in [-1, 1], shape (1, 3, size, size)."""
    grid = torch.linspace(0, 2 * math.pi, size)
    u, v = torch.meshgrid(grid, grid, indexing="ij")
    return torch.stack([u.sin() * v.cos(), (u + v).sin(), (u - v).cos()])[None] * 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prior")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--methods", default="latent_dps,psld,resample")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    if not is_latent_prior(prior):
        parser.error(f"{args.prior} is not a latent diffusion pipeline")
    op = Inpainting("box", size=args.size // 2, shape=(args.size, args.size))
    y = op.measure(synthetic_image(args.size), 0.01, torch.Generator().manual_seed(0))
    print("| method | steps | NFE | decoder passes | encoder passes | seconds |")
    print("|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        decodes, encodes = prior.decode_calls, prior.encode_calls
        result = solve(y, op, prior, method=method, steps=args.steps, seed=0, noise_sigma=0.01, progress=False)
        print(
            f"| {method} | {args.steps} | {result.nfe:g} | {prior.decode_calls - decodes} | "
            f"{prior.encode_calls - encodes} | {result.seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
