"""Train the bundled learned proximal network ``natural-lpn`` by proximal matching.

Following the official LPN trainer (``ZhenghanFang/learned-proximal-networks``,
``lpn/train.py`` and ``lpn/utils/utils.py``): clean patches ``x`` of the training
photographs (``photo_split.py``; crops, flips, rotations and scales from
``train_prior.py``), noisy ``x~ = x + sigma_noise * eps``, network output
``f(x~) = grad psi(x~)`` of an input-convex potential (``priors.lpn.ConvexPotential``).

* The first ``--pretrain-fraction`` of the steps (official: 20,000 of 40,000) minimise the L1
  loss ``mean |f(x~) - x|`` at learning rate ``--pretrain-lr`` (official 1e-3).
* Then the proximal matching loss ``1 - exp(-||f(x~) - x||^2 / gamma^2)`` (per patch, averaged)
  at ``--lr`` (official 1e-4), with ``gamma`` halved over ``--stages`` equal stages (official 4)
  down to ``gamma_min``: official ``0.08 sqrt(d)`` for images in [0, 1], so ``0.16 sqrt(d)`` on
  invsolve's [-1, 1] scale (``d`` = pixels x channels of a patch).
* Adam; after every step the constrained weights are clipped to be non-negative (``wclip``).

``--noise-sigma`` is on [-1, 1]: the default 0.1 is the official CelebA model ``s=0.05``
(on [0, 1]), the one its deblurring runs use at the mildest setting.

CPU:   nice -n 10 python scripts/train_lpn.py --max-steps 3000 --max-minutes 600 --threads 1   (the bundled weights)
GPUs:  accelerate launch scripts/train_lpn.py --batch-size 64 --max-steps 40000 ...
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from train_prior import adapt_threads, multiscale_regions, sample_batch

from priors.lpn import ConvexPotential, LPNPrior, potential_gradient

CHECKPOINT_NAME = "train_state.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("assets/priors/natural-lpn"))
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("runs/natural-lpn"))
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4, 8, 4, 2, 1])
    parser.add_argument("--beta", type=float, default=100.0, help="softplus sharpness (official 100)")
    parser.add_argument("--alpha", type=float, default=1e-6, help="strong-convexity weight (official 1e-6)")
    parser.add_argument("--quadratic", type=int, default=6, help="channels of the learned quadratic term (0: none)")
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="per process (official 64)")
    parser.add_argument("--noise-sigma", type=float, default=0.1, help="training noise std on [-1, 1]")
    parser.add_argument("--max-steps", type=int, default=3000, help="total steps; sets the loss schedule")
    parser.add_argument("--pretrain-fraction", type=float, default=0.5)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--gamma-min", type=float, default=None, help="default 0.16 sqrt(d)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock budget of this run")
    parser.add_argument("--export-minutes", type=float, default=10.0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (one while the CPU is oversubscribed)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def schedule(step: int, args: argparse.Namespace, gamma_min: float) -> tuple[str, float, float | None]:
    """``(loss, learning rate, gamma)`` at ``step`` (the official ``get_loss_hparams_and_lr``)."""
    pretrain = int(args.pretrain_fraction * args.max_steps)
    if step < pretrain:
        return "l1", args.pretrain_lr, None
    per_stage = max(1, (args.max_steps - pretrain) // args.stages)
    stage = min((step - pretrain) // per_stage, args.stages - 1)
    return "prox_matching", args.lr, gamma_min * 2 ** (args.stages - 1 - stage)


def loss_value(kind: str, output: torch.Tensor, clean: torch.Tensor, gamma: float | None) -> torch.Tensor:
    if kind == "l1":
        return (output - clean).abs().mean()
    distance2 = (output - clean).flatten(1).pow(2).sum(1)
    return (1 - torch.exp(-distance2 / gamma**2)).mean()


def export(potential: ConvexPotential, args: argparse.Namespace, step: int, minutes: float, cpu: float) -> None:
    training = {"script": "scripts/train_lpn.py", "steps": step, "minutes": round(minutes, 1), "cpu_minutes": round(cpu, 1),
                "batch_size": args.batch_size, "crop": args.crop, "max_steps": args.max_steps,
                "loss": "L1 pretraining, then proximal matching"}
    LPNPrior(potential, noise_sigma=args.noise_sigma).save(args.output, training=training)


def main() -> None:
    args = parse_args()
    adapt_threads(args.threads)
    accelerator = Accelerator()
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    noise_generator = torch.Generator(accelerator.device).manual_seed(args.seed + 1000 + accelerator.process_index)
    potential = ConvexPotential(3, args.hidden, tuple(args.dilations), 3, args.beta, args.alpha, args.quadratic)
    potential.init_constrained(generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.Adam(potential.parameters(), lr=args.pretrain_lr)
    step, minutes_before, cpu_before = 0, 0.0, 0.0
    checkpoint = args.checkpoint_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        potential.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, minutes_before = int(state["step"]), float(state["minutes"])
        cpu_before = float(state.get("cpu_minutes", torch.tensor(0.0)))
        generator.set_state(state["generator"])
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    potential, optimizer = accelerator.prepare(potential, optimizer)
    unwrapped = accelerator.unwrap_model(potential)
    regions = [region.to(accelerator.device) for region in multiscale_regions(args.crop)]
    gamma_min = args.gamma_min if args.gamma_min is not None else 0.16 * math.sqrt(3 * args.crop**2)
    log_path = args.output / "loss_log.csv"
    if accelerator.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
        if not log_path.exists() or step == 0:
            with open(log_path, "w", newline="") as handle:
                csv.writer(handle).writerow(["step", "loss_type", "gamma", "loss", "psnr_gain_db", "elapsed_minutes", "cpu_minutes"])
        accelerator.print(f"{sum(p.numel() for p in potential.parameters()):,} parameters, gamma_min {gamma_min:.3g}")

    start = time.monotonic()
    elapsed = lambda: minutes_before + (time.monotonic() - start) / 60  # noqa: E731
    cpu_start = time.process_time()
    cpu_minutes = lambda: cpu_before + (time.process_time() - cpu_start) / 60  # noqa: E731

    def save_state() -> None:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(), "step": torch.tensor(step),
                    "generator": generator.get_state(), "minutes": torch.tensor(elapsed()), "cpu_minutes": torch.tensor(cpu_minutes())}, checkpoint)

    last_export = start
    window = torch.zeros(2)
    count = 0
    progress = tqdm(total=args.max_steps, initial=step, disable=None if accelerator.is_main_process else True)
    while step < args.max_steps and time.monotonic() - start < args.max_minutes * 60:
        kind, lr, gamma = schedule(step, args, gamma_min)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean = sample_batch(regions, args.batch_size, args.crop, generator)
        noisy = clean + args.noise_sigma * torch.randn(clean.shape, generator=noise_generator, device=clean.device)
        output = potential_gradient(potential, noisy, create_graph=True)
        loss = loss_value(kind, output, clean, gamma)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.clamp_weights()
        step += 1
        with torch.no_grad():
            mse_out = (output.detach() - clean).pow(2).mean()
            window += torch.stack([loss.detach().cpu(), 10 * torch.log10(args.noise_sigma**2 / mse_out).cpu()])
        count += 1
        progress.update(1)
        if step % args.log_every == 0:
            adapt_threads(args.threads)
            if accelerator.is_main_process:
                mean = (window / count).tolist()
                window.zero_()
                count = 0
                progress.set_postfix(loss=f"{mean[0]:.4f}", gain=f"{mean[1]:.2f} dB")
                with open(log_path, "a", newline="") as handle:
                    csv.writer(handle).writerow(
                        [step, kind, "" if gamma is None else f"{gamma:.4g}", f"{mean[0]:.5f}", f"{mean[1]:.3f}", f"{elapsed():.2f}", f"{cpu_minutes():.2f}"]
                    )
        if time.monotonic() - last_export > args.export_minutes * 60 and accelerator.is_main_process:
            last_export = time.monotonic()
            export(unwrapped, args, step, elapsed(), cpu_minutes())
            save_state()
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(unwrapped, args, step, elapsed(), cpu_minutes())
        save_state()
        accelerator.print(f"stopped at step {step} after {elapsed():.1f} minutes; exported to {args.output}")


if __name__ == "__main__":
    main()
