"""Quality bar of the bundled restorer ``natural-sr2`` (DRP) and learned proximal network ``natural-lpn``
(PnP-ADMM / PGD), on the held-out 128x128 crops and with the protocol of ``quality_bar.py``.

* ``own``: what each network was trained for: x2 bicubic super-resolution (noiseless) against
  bicubic upsampling, and denoising at the LPN's training level against the noisy input;
* ``deblur`` (Gaussian 61x61, std 3, circular) and ``sr`` (x4 bicubic), measurement noise
  0.05 on [-1, 1], one fixed noise draw per crop (``quality_bar.measure``), against the oracle-tuned
  Tikhonov / bicubic baselines of ``quality_bar.py``: DRP with ``natural-sr2``, PnP-ADMM and PGD with
  ``natural-lpn``, and classic PnP-ADMM with the diffusion prior ``natural-64``'s denoiser,
  all with their default settings unless ``--option`` says otherwise.

Writes ``<output-dir>/<task>.png`` (rows: crops; columns: measurement, baseline, each
method, ground truth) and ``results.json``, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from photo_split import HELDOUT_CROPS, TUNING_CROPS, heldout_crops
from quality_bar import NOISE_SIGMA, TASKS, as_image, baseline, grid, measure, row

from invsolve import solve
from invsolve.commands._arguments import parse_key_values
from invsolve.io import save_image
from priors import load_prior

#: (label, prior role, method, fixed options) of each run on the deblur and SR tasks; the roles'
#: priors are ``--restorer``, ``--lpn`` and ``--diffusion``.
RUNS = (
    ("DRP, natural-sr2", "restorer", "drp", {}),
    ("PnP-ADMM, natural-lpn", "lpn", "pnp_admm", {}),
    ("PnP-PGD, natural-lpn", "lpn", "pnp_admm", {"solver": "pgd"}),
    ("PnP-ADMM, natural-64 denoiser", "diffusion", "pnp_admm", {}),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/quality_bar_networks"))
    parser.add_argument("--restorer", default="natural-sr2", help="restorer prior (bundled name or folder)")
    parser.add_argument("--lpn", default="natural-lpn", help="LPN prior (bundled name or folder)")
    parser.add_argument("--diffusion", default="natural-64", help="diffusion prior for classic PnP")
    parser.add_argument("--tasks", nargs="+", default=["own", "deblur", "sr"], choices=["own", "deblur", "sr"])
    parser.add_argument("--runs", nargs="+", type=int, default=None, help="indices into RUNS (default: all)")
    parser.add_argument("--option", action="append", default=[], metavar="RUN:KEY=VALUE",
                        help="extra method option for run number RUN (0-based index into RUNS)")
    parser.add_argument("--crop-set", choices=["eval", "tuning"], default="eval")
    parser.add_argument("--crops", type=int, default=None, help="use only the first N crops of the set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def own_tasks(clean: torch.Tensor, seed: int, restorer_name: str, lpn_name: str) -> tuple[list[dict], list[torch.Tensor]]:
    """Each network on the task it was trained for."""
    restorer, lpn = load_prior(restorer_name), load_prior(lpn_name)
    low = measure_sr2(clean)
    start = time.perf_counter()
    restored = restorer.restore(low).clamp(-1, 1)
    seconds = (time.perf_counter() - start) / clean.shape[0]
    bicubic = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
    generator = torch.Generator().manual_seed(seed + 1)
    noisy = clean + lpn.noise_sigma * torch.randn(clean.shape, generator=generator)
    start = time.perf_counter()
    denoised = lpn.prox(noisy)
    lpn_seconds = (time.perf_counter() - start) / clean.shape[0]
    rows = [
        row("sr2 (noiseless)", "bicubic upsampling", 0, bicubic, clean, 0.0),
        row("sr2 (noiseless)", "natural-sr2 restorer (one call)", 1, restored, clean, seconds),
        row(f"denoise sigma {lpn.noise_sigma}", "noisy input", 0, noisy, clean, 0.0),
        row(f"denoise sigma {lpn.noise_sigma}", "natural-lpn prox (one call)", 1, denoised, clean, lpn_seconds),
    ]
    return rows, [as_image(low, clean), bicubic, restored, noisy, denoised, clean]


def measure_sr2(clean: torch.Tensor) -> torch.Tensor:
    import operators

    return operators.build("super_resolution", factor=2, method="bicubic")(clean)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clean = heldout_crops(places=HELDOUT_CROPS if args.crop_set == "eval" else TUNING_CROPS)[: args.crops]
    extra: dict[int, dict] = {}
    for item in args.option:
        index, sep, assignment = item.partition(":")
        if not sep or not index.isdigit() or int(index) >= len(RUNS):
            raise ValueError(f"--option expects RUN:KEY=VALUE with RUN in 0..{len(RUNS) - 1}, got {item!r}")
        extra.setdefault(int(index), {}).update(parse_key_values([assignment], "--option"))
    chosen = args.runs if args.runs is not None else list(range(len(RUNS)))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    priors = {}
    for task in args.tasks:
        if task == "own":
            rows, columns = own_tasks(clean, args.seed, args.restorer, args.lpn)
            results += rows
            save_image(grid(columns), args.output_dir / "own.png")
            continue
        operator, y = measure(TASKS[task], clean, args.seed)
        label, reference = baseline(task, operator, y, clean)
        results.append(row(task, label, 0, reference, clean, 0.0))
        columns = [as_image(y, clean), reference]
        for index in chosen:
            name, role, method, options = RUNS[index]
            options = {**options, **extra.get(index, {})}
            if role not in priors:
                priors[role] = load_prior(getattr(args, role))
            result = solve(y, operator, priors[role], method=method, seed=args.seed,
                           noise_sigma=NOISE_SIGMA, progress=False, **options)
            restored = result.image.clamp(-1, 1)
            described = name + (f" {extra[index]}" if index in extra else "")
            results.append(row(task, described, result.options["steps"], restored, clean, result.seconds / clean.shape[0]))
            columns.append(restored)
        save_image(grid([c.cpu() for c in columns] + [clean]), args.output_dir / f"{task}.png")

    print("| task | method | steps | PSNR (dB) | SSIM | s / image |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['method']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds_per_image']:.2f} |")
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
