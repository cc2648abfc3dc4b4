"""Choose the quality bar's methods: a grid of methods and settings on the tuning crops.

For each prior and task, every configuration of ``GRIDS[task]`` restores the
held-out *tuning* crops (``photo_split.TUNING_CROPS``, disjoint from the
evaluation crops that ``quality_bar.py`` reports) and one Markdown row gives
its mean PSNR, the gain over the task's baseline and the seconds per image.
Measurements are drawn exactly as in ``quality_bar.py``.

    python scripts/tune_quality_bar.py --tasks sr deblur --device cuda
"""

from __future__ import annotations

import argparse
import time

from photo_split import TUNING_CROPS, heldout_crops
from quality_bar import NOISE_SIGMA, TASKS, baseline, measure, synchronize

from invsolve import solve
from invsolve.commands._arguments import resolve_device
from invsolve.metrics import psnr
from priors import load_prior
from priors.clipped import ClippedPrior

#: (method, steps, samples, options) per task.
GRIDS: dict[str, list[tuple[str, int, int, dict]]] = {
    "sr": [
        ("pigdm", 20, 4, {}),
        ("pigdm", 50, 4, {}),
        ("pigdm", 100, 4, {}),
        ("ddrm", 20, 4, {}),
        ("ddrm", 20, 16, {}),
        ("ddrm", 50, 4, {}),
        ("ddrm", 20, 4, {"eta": 0.5}),
        ("pigdm", 50, 8, {}),
        ("pigdm", 50, 4, {"eta": 0.5}),
        ("pigdm", 50, 4, {"weight": 0.5}),
        ("pigdm", 50, 4, {"weight": 2.0}),
        ("ddnm", 20, 4, {}),
        ("ddnm", 50, 4, {}),
        ("ddnm", 100, 4, {"eta": 1.0}),
        ("diffpir", 20, 4, {}),
        ("diffpir", 50, 4, {}),
        ("diffpir", 50, 4, {"lam": 3.0}),
        ("diffpir", 50, 4, {"lam": 0.3}),
        ("diffpir", 100, 4, {"zeta": 0.3}),
        ("reddiff", 100, 4, {}),
        ("reddiff", 300, 4, {"lam": 0.5}),
        ("dps", 250, 4, {}),
        ("daps", 50, 4, {}),
    ],
    "deblur": [
        ("pigdm", 20, 4, {}),
        ("pigdm", 50, 4, {}),
        ("pigdm", 50, 8, {}),
        ("pigdm", 50, 4, {"weight": 2.0}),
        ("ddrm", 20, 4, {}),
        ("ddrm", 50, 4, {"eta": 1.0}),
        ("ddnm", 50, 4, {}),
        ("diffpir", 50, 4, {}),
        ("diffpir", 50, 4, {"lam": 3.0}),
    ],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", nargs="+", default=["natural-64"], help="bundled names or diffusers folders")
    parser.add_argument("--tasks", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--start-sigma", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    clean = heldout_crops(places=TUNING_CROPS).to(device)
    print("| prior | task | method | steps | samples | options | PSNR (dB) | gain over baseline | s / image |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.prior:
        prior = ClippedPrior(load_prior(name, device=device), sigma_max=args.start_sigma)
        for task in args.tasks:
            operator, y = measure(TASKS[task], clean, args.seed)
            label, reference = baseline(task, operator, y, clean)
            reference_psnr = psnr(reference, clean).mean().item()
            print(f"| {name} | {task} | {label} | 0 | 1 | | {reference_psnr:.2f} | 0 | 0 |", flush=True)
            for method, steps, samples, options in GRIDS[task]:
                synchronize(device)
                start = time.perf_counter()
                result = solve(y, operator, prior, method=method, steps=steps, seed=args.seed,
                               noise_sigma=NOISE_SIGMA, num_samples=samples, progress=False, **options)
                score = psnr(result.mean.clamp(-1, 1), clean).mean().item()
                synchronize(device)
                seconds = (time.perf_counter() - start) / clean.shape[0]
                print(f"| {name} | {task} | {method} | {steps} | {samples} | {options or ''} | {score:.2f} | "
                      f"{score - reference_psnr:+.2f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
