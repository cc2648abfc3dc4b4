"""Train the bundled x2 super-resolution restorer ``natural-sr2`` (the prior of DRP).

A small EDSR-style network (``priors.restorer.ResidualUpsampler``) learns to invert
invsolve's own ``super_resolution`` operator (bicubic imresize with antialiasing, factor
2, noiseless, as the classical-SR SwinIR models the official DRP uses) with the L1 loss
(SwinIR's), on random crops of the same training photographs as ``natural-64``
(``photo_split.py``; crops, flips, rotations and scales from ``train_prior.py``).
The EMA of the weights is exported as a restorer folder (``config.json`` +
``model.safetensors``, loaded by ``load_prior``).

CPU:   nice -n 10 python scripts/train_restorer.py --max-steps 5000 --max-minutes 600 --threads 1   (the bundled weights)
GPUs:  accelerate launch scripts/train_restorer.py --batch-size 64 ...

Every ``--export-minutes`` the EMA model is written to ``--output`` and a resumable
checkpoint to ``--checkpoint-dir``; ``--output/loss_log.csv`` logs the mean loss per window.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from train_prior import EMA, adapt_threads, multiscale_regions, sample_batch

import operators
from priors.restorer import ResidualUpsampler, RestorerPrior

CHECKPOINT_NAME = "train_state.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("assets/priors/natural-sr2"))
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("runs/natural-sr2"))
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--crop", type=int, default=48, help="high-resolution crop size (a multiple of the factor)")
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock budget of this run")
    parser.add_argument("--export-minutes", type=float, default=10.0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (one while the CPU is oversubscribed)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def export(ema: EMA, args: argparse.Namespace, step: int, minutes: float, cpu: float) -> None:
    degradation = {"operator": "super_resolution", "factor": args.factor, "method": "bicubic"}
    training = {"script": "scripts/train_restorer.py", "steps": step, "minutes": round(minutes, 1), "cpu_minutes": round(cpu, 1),
                "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr, "loss": "L1"}
    RestorerPrior(ema.model, degradation, noise_sigma=0.0).save(args.output, training=training)


def main() -> None:
    args = parse_args()
    adapt_threads(args.threads)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    torch.manual_seed(args.seed)  # only the initial weights; data use the generator
    network = ResidualUpsampler(args.factor, 3, args.width, args.blocks)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    ema = EMA(network, args.ema_decay)
    step, minutes_before, cpu_before = 0, 0.0, 0.0
    checkpoint = args.checkpoint_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, minutes_before = int(state["step"]), float(state["minutes"])
        cpu_before = float(state.get("cpu_minutes", torch.tensor(0.0)))
        generator.set_state(state["generator"])
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    ema.model.to(accelerator.device)
    network, optimizer = accelerator.prepare(network, optimizer)
    degrade = operators.build("super_resolution", factor=args.factor, method="bicubic")
    regions = [region.to(accelerator.device) for region in multiscale_regions(args.crop)]
    log_path = args.output / "loss_log.csv"
    if accelerator.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
        if not log_path.exists() or step == 0:
            with open(log_path, "w", newline="") as handle:
                csv.writer(handle).writerow(["step", "l1_loss", "bicubic_l1", "lr", "elapsed_minutes", "cpu_minutes"])
        accelerator.print(f"{sum(p.numel() for p in network.parameters()):,} parameters, {len(regions)} regions")

    def save_state() -> None:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {"model": accelerator.unwrap_model(network).state_dict(), "ema": ema.model.state_dict(),
                 "optimizer": optimizer.state_dict(), "step": torch.tensor(step), "generator": generator.get_state(),
                 "minutes": torch.tensor(elapsed()), "cpu_minutes": torch.tensor(cpu_minutes())}
        torch.save(state, checkpoint)

    start = time.monotonic()
    elapsed = lambda: minutes_before + (time.monotonic() - start) / 60  # noqa: E731
    cpu_start = time.process_time()
    cpu_minutes = lambda: cpu_before + (time.process_time() - cpu_start) / 60  # noqa: E731
    last_export = start
    window = torch.zeros(2)
    count = 0
    progress = tqdm(total=args.max_steps, initial=step, disable=None if accelerator.is_main_process else True)
    network.train()
    while step < args.max_steps and time.monotonic() - start < args.max_minutes * 60:
        clean = sample_batch(regions, args.batch_size, args.crop, generator)
        low = degrade(clean)
        restored = network(low)
        loss = (restored.float() - clean).abs().mean()
        accelerator.backward(loss)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ema.update(accelerator.unwrap_model(network), step)
        with torch.no_grad():
            bicubic = torch.nn.functional.interpolate(low, scale_factor=args.factor, mode="bicubic")
            window += torch.stack([loss.detach().cpu(), (bicubic - clean).abs().mean().cpu()])
        count += 1
        progress.update(1)
        if step % args.log_every == 0:
            adapt_threads(args.threads)
            if accelerator.is_main_process:
                mean = (window / count).tolist()
                window.zero_()
                count = 0
                progress.set_postfix(l1=f"{mean[0]:.4f}", bicubic=f"{mean[1]:.4f}")
                with open(log_path, "a", newline="") as handle:
                    csv.writer(handle).writerow([step, f"{mean[0]:.5f}", f"{mean[1]:.5f}", args.lr, f"{elapsed():.2f}", f"{cpu_minutes():.2f}"])
        if time.monotonic() - last_export > args.export_minutes * 60 and accelerator.is_main_process:
            last_export = time.monotonic()
            export(ema, args, step, elapsed(), cpu_minutes())
            save_state()
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(ema, args, step, elapsed(), cpu_minutes())
        save_state()
        accelerator.print(f"stopped at step {step} after {elapsed():.1f} minutes; exported to {args.output}")


if __name__ == "__main__":
    main()
