"""Quality bar of the bundled prior on held-out 128x128 photo crops.

Tasks (measurement noise std 0.05 on [-1, 1], one fixed noise draw per crop):

* ``denoise``: the prior's denoiser at sigma 0.2 against the noisy input;
* ``deblur``: Gaussian blur 61x61, std 3, circular boundary, against a
  gradient-regularised Tikhonov deconvolution
  ``X = conj(K) Y / (|K|^2 + lam (|D_h|^2 + |D_v|^2))`` (Fourier, exact for the
  circular blur) whose ``lam`` is **oracle-tuned**: the value on a log grid with
  the best mean PSNR on these same crops against the ground truth;
* ``sr``: super-resolution x4 (bicubic imresize), against bicubic upsampling of
  the measurement;
* ``inpaint``: 32x32 centre box (no baseline; judge the PNG).

The prior is wrapped in ``priors.ClippedPrior`` (denoiser output clamped
to [-1, 1], sampling started at sigma 10) unless ``--no-clip``.
The crops are ``photo_split.HELDOUT_CROPS`` (never seen in training); the
methods' hyperparameters were tuned on the separate ``TUNING_CROPS``
(``--crop-set tuning``). Each task
writes ``<output-dir>/<task>.png`` (rows: crops; columns: measurement, baseline,
restoration, ground truth) and prints one Markdown table; ``results.json`` holds
all numbers. Timings are wall-clock seconds per image of a batched run on this
machine's CPU (or GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from photo_split import HELDOUT_CROPS, TUNING_CROPS, heldout_crops
from torch import Tensor

import operators
from invsolve import solve
from invsolve.commands._arguments import parse_key_values, resolve_device
from invsolve.io import save_image
from invsolve.metrics import psnr, ssim
from priors import load_prior
from priors.clipped import ClippedPrior

NOISE_SIGMA = 0.05
DENOISE_SIGMA = 0.2
TIKHONOV_GRID = torch.logspace(-5, 0, 31, dtype=torch.float64)


@dataclass
class Task:
    """One inverse problem of the quality bar and its default method."""

    operator: str
    operator_args: dict
    method: str
    steps: int
    options: dict = field(default_factory=dict)
    samples: int = 1


#: Methods chosen on the tuning crops (``tune_quality_bar.py``): the mean of several posterior samples
#: for the PSNR-scored tasks (16 for SR, where DDRM's samples are cheap), one sample for the inpainting fill.
TASKS: dict[str, Task] = {
    "deblur": Task("gaussian_blur", {"kernel_size": 61, "sigma": 3.0, "padding": "circular"}, "ddrm", 20, samples=4),
    "sr": Task("super_resolution", {"factor": 4, "method": "bicubic"}, "ddrm", 20, samples=16),
    "inpaint": Task("inpainting", {"mask": "box", "size": 32, "position": "center"}, "ddnm", 20),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="natural-64", help="bundled name or diffusers folder")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/quality_bar"))
    parser.add_argument("--tasks", nargs="+", default=["denoise", *TASKS], choices=["denoise", *TASKS])
    parser.add_argument("--method", action="append", default=[], metavar="TASK=NAME", help="method of a task")
    parser.add_argument("--steps", action="append", default=[], metavar="TASK=N", help="steps of a task")
    parser.add_argument(
        "--samples", action="append", default=[], metavar="TASK=N",
        help="posterior samples of a task; the restoration is their mean",
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="TASK:KEY=VALUE", help="method hyperparameter of a task"
    )
    parser.add_argument(
        "--crop-set", choices=["eval", "tuning"], default="eval",
        help="held-out evaluation crops (default) or the separate crops used to tune hyperparameters",
    )
    parser.add_argument("--crops", type=int, default=None, help="use only the first N crops of the set")
    parser.add_argument(
        "--no-clip", action="store_true",
        help="use the raw prior: no clamping of the denoiser output to [-1, 1], no lower start level",
    )
    parser.add_argument(
        "--start-sigma", type=float, default=10.0, help="largest noise level the samplers start from (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser.parse_args()


def configure(args: argparse.Namespace) -> dict[str, Task]:
    """The tasks with the command line's methods, steps and options applied."""
    tasks = {
        name: Task(t.operator, dict(t.operator_args), t.method, t.steps, dict(t.options), t.samples)
        for name, t in TASKS.items()
    }
    for name, value in parse_key_values(args.method, "--method").items():
        tasks[name].method = str(value)
    for name, value in parse_key_values(args.steps, "--steps").items():
        tasks[name].steps = int(value)
    for name, value in parse_key_values(args.samples, "--samples").items():
        tasks[name].samples = int(value)
    for item in args.option:
        name, sep, assignment = item.partition(":")
        if not sep or name not in tasks:
            raise ValueError(f"--option expects TASK:KEY=VALUE with TASK in {sorted(tasks)}, got {item!r}")
        tasks[name].options.update(parse_key_values([assignment], "--option"))
    return tasks


def tikhonov_deblur(operator, y: Tensor, lam: float) -> Tensor:
    """Gradient-regularised Tikhonov deconvolution of a circular blur, in Fourier."""
    height, width = y.shape[-2:]
    delta = torch.zeros(1, 1, height, width, dtype=torch.float64, device=y.device)
    delta[..., 0, 0] = 1
    spectrum = torch.fft.rfft2(operator(delta))
    dh = torch.zeros(height, width, dtype=torch.float64, device=y.device)
    dh[0, 0], dh[0, -1] = 1, -1
    gradient = torch.fft.rfft2(dh).abs().square() + torch.fft.rfft2(dh.T.contiguous()).abs().square()
    estimate = torch.fft.irfft2(
        spectrum.conj() * torch.fft.rfft2(y.double()) / (spectrum.abs().square() + lam * gradient), s=(height, width)
    )
    return estimate.to(y.dtype)


def check_circular(operator, x: Tensor) -> None:
    """The Tikhonov baseline assumes a circular convolution; check it on ``x``."""
    height, width = x.shape[-2:]
    delta = torch.zeros(1, 1, height, width, dtype=torch.float64, device=x.device)
    delta[..., 0, 0] = 1
    spectrum = torch.fft.rfft2(operator(delta))
    direct = operator(x.double())
    fourier = torch.fft.irfft2(torch.fft.rfft2(x.double()) * spectrum, s=(height, width))
    if (direct - fourier).abs().max() > 1e-8:
        raise ValueError("the deblur operator is not a circular convolution; the Tikhonov baseline needs one")


def baseline(task: str, operator, y: Tensor, clean: Tensor) -> tuple[str, Tensor]:
    """The classical baseline of a task (oracle-tuned regulariser for deblurring)."""
    if task == "deblur":
        check_circular(operator, clean)
        scores = [psnr(tikhonov_deblur(operator, y, float(lam)).clamp(-1, 1), clean).mean() for lam in TIKHONOV_GRID]
        best = int(torch.stack(scores).argmax())
        lam = float(TIKHONOV_GRID[best])
        return f"Tikhonov (gradient, oracle lam={lam:.2g})", tikhonov_deblur(operator, y, lam).clamp(-1, 1)
    if task == "sr":
        return "bicubic upsampling", F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    return "measurement", y


def as_image(y: Tensor, like: Tensor) -> Tensor:
    """A measurement shown at the image size (nearest-neighbour upsampling for SR)."""
    if y.shape[-2:] != like.shape[-2:]:
        y = F.interpolate(y, size=like.shape[-2:], mode="nearest")
    return y


def grid(columns: list[Tensor], gap: int = 4) -> Tensor:
    """Rows of items, columns of versions, with white gaps: (3, H_total, W_total)."""
    batch, channels, height, width = columns[0].shape
    canvas = torch.ones(channels, batch * (height + gap) - gap, len(columns) * (width + gap) - gap)
    for j, column in enumerate(columns):
        for i in range(batch):
            top, left = i * (height + gap), j * (width + gap)
            canvas[:, top : top + height, left : left + width] = column[i].clamp(-1, 1)
    return canvas


def row(task: str, method: str, steps: int, image: Tensor, clean: Tensor, seconds: float) -> dict:
    return {
        "task": task,
        "method": method,
        "steps": steps,
        "psnr": psnr(image, clean).mean().item(),
        "ssim": ssim(image, clean).mean().item(),
        "psnr_per_image": [round(v, 2) for v in psnr(image, clean).tolist()],
        "seconds_per_image": seconds,
    }


def measure(task: Task, clean: Tensor, seed: int) -> tuple[object, Tensor]:
    """The task's operator and ``A(clean) + noise``, the noise drawn on the CPU from ``seed + 1``."""
    operator = operators.build(task.operator, **task.operator_args)
    generator = torch.Generator().manual_seed(seed + 1)
    return operator, operator.measure(clean.cpu(), NOISE_SIGMA, generator=generator).to(clean.device)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = configure(args)
    device = resolve_device(args.device)
    prior = load_prior(args.prior, device=device)
    prior = prior if args.no_clip else ClippedPrior(prior, sigma_max=args.start_sigma)
    clean = heldout_crops(places=HELDOUT_CROPS if args.crop_set == "eval" else TUNING_CROPS)[: args.crops].to(device)
    n = clean.shape[0]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.tasks:
        if name == "denoise":
            generator = torch.Generator().manual_seed(args.seed + 1)
            noisy = clean + DENOISE_SIGMA * torch.randn(clean.shape, generator=generator).to(device)
            sigma = torch.full((n,), DENOISE_SIGMA, device=device)
            with torch.no_grad():
                prior.denoise(noisy[:1], sigma[:1])  # warm-up call, not timed
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                denoised = prior.denoise(noisy, sigma)
            synchronize(device)
            seconds = (time.perf_counter() - start) / n
            results.append(row(name, f"noisy input (sigma {DENOISE_SIGMA})", 0, noisy, clean, 0.0))
            results.append(row(name, f"{args.prior} denoiser", 1, denoised, clean, seconds))
            save_image(grid([noisy.cpu(), denoised.cpu(), clean.cpu()]), args.output_dir / f"{name}.png")
            continue
        task = tasks[name]
        operator, y = measure(task, clean, args.seed)
        label, reference = baseline(name, operator, y, clean)
        result = solve(
            y, operator, prior, method=task.method, steps=task.steps, seed=args.seed,
            noise_sigma=NOISE_SIGMA, num_samples=task.samples, progress=False, **task.options,
        )
        restored = result.mean.clamp(-1, 1)
        results.append(row(name, label, 0, reference, clean, 0.0))
        described = task.method + (f" {task.options}" if task.options else "")
        described += f", mean of {task.samples} samples" if task.samples > 1 else ""
        results.append(row(name, described, task.steps, restored, clean, result.seconds / n))
        save_image(grid([as_image(y, clean).cpu(), reference.cpu(), restored.cpu(), clean.cpu()]), args.output_dir / f"{name}.png")

    print("| task | method | steps | PSNR (dB) | SSIM | s / image |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['method']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds_per_image']:.2f} |")
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
