"""Train the bundled default prior ``natural-64``.

A fully convolutional diffusers ``UNet2DModel`` (DownBlock2D / UpBlock2D, no
attention) learns the DDPM epsilon-prediction objective (Ho et al., 2020,
"Denoising Diffusion Probabilistic Models", eq. 14, linear beta schedule,
1000 steps) on random 64x64 crops, with flips and 90-degree rotations, of
scikit-image's bundled colour photographs (training part of the split in
``photo_split.py``) at scales 1, 1/2 and, for large photographs, 1/4.
The EMA of the weights (decay ``min(d, (1 + s) / (10 + s))``) is exported.

CPU:   python scripts/train_prior.py --max-minutes 120
GPU:   python scripts/train_prior.py --batch-size 128 --warmup-steps 300 --ema-decay 0.9995 \
           --mixed-precision bf16 --max-minutes 5          (the bundled weights, one H100)
GPUs:  accelerate launch scripts/train_prior.py --mixed-precision bf16 --batch-size 128 ...

Every ``--export-minutes`` the EMA model is written as a diffusers
``DDPMPipeline`` folder (safetensors) to ``--output`` and a resumable training
checkpoint to ``--checkpoint-dir``; the run resumes from that checkpoint when
started again. ``--output/loss_log.csv`` logs the mean loss per logging window.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from photo_split import training_regions
from tqdm.auto import tqdm

CHECKPOINT_NAME = "train_state.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("assets/priors/natural-64"))
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("runs/natural-64"))
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="per process, per accumulation step")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--max-minutes", type=float, default=120.0, help="wall-clock budget of this run")
    parser.add_argument("--export-minutes", type=float, default=10.0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch CPU threads; drops to 1 while the CPU is oversubscribed (load average above the cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="start a fresh run from an exported prior folder's weights (same --channels); ignored when resuming",
    )
    return parser.parse_args()


def build_unet(channels: list[int], layers_per_block: int, crop: int) -> UNet2DModel:
    """The attention-free UNet; it applies to any image whose sides divide by 2**(len(channels)-1)."""
    return UNet2DModel(
        sample_size=crop,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=min(32, channels[0]),
        add_attention=False,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


def multiscale_regions(crop: int) -> list[torch.Tensor]:
    """Training regions at scales 1, 1/2 and 1/4 (antialiased), keeping those larger than 2 crops."""
    regions = []
    for region in training_regions():
        for scale in (1.0, 0.5, 0.25):
            size = (round(region.shape[1] * scale), round(region.shape[2] * scale))
            if min(size) < 2 * crop:
                continue
            if scale == 1.0:
                regions.append(region)
            else:
                scaled = F.interpolate(region[None], size=size, mode="bilinear", antialias=True, align_corners=False)
                regions.append(scaled[0].clamp(-1, 1))
    return regions


def sample_batch(regions: list[torch.Tensor], batch: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops with random horizontal flips and 90-degree rotations, (batch, 3, crop, crop).

    Crops are gathered with one indexing operation per region drawn and augmented
    with one operation per flip / rotation group, so a large GPU batch costs a few
    dozen kernel launches rather than several per crop. Offsets come from the CPU
    ``generator``; the crops stay on the regions' device.
    """
    picks = torch.randint(len(regions), (batch,), generator=generator)
    fractions = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    flips = torch.randint(2, (batch,), generator=generator).bool()
    turns = torch.randint(4, (batch,), generator=generator)
    device = regions[0].device
    span = torch.arange(crop)
    crops = torch.empty(batch, 3, crop, crop, device=device)
    for index in picks.unique().tolist():
        members = (picks == index).nonzero().flatten()
        region = regions[index]
        tops = (fractions[members, 0] * (region.shape[1] - crop + 1)).long()
        lefts = (fractions[members, 1] * (region.shape[2] - crop + 1)).long()
        rows = (tops[:, None] + span)[:, :, None]
        cols = (lefts[:, None] + span)[:, None, :]
        crops[members.to(device)] = region[:, rows.to(device), cols.to(device)].transpose(0, 1)
    crops = torch.where(flips.to(device).view(-1, 1, 1, 1), crops.flip(-1), crops)
    for quarter in (1, 2, 3):
        members = (turns == quarter).nonzero().flatten().to(device)
        crops[members] = torch.rot90(crops[members], quarter, dims=(2, 3))
    return crops


class EMA:
    """Exponential moving average of weights with the usual warm-up ``min(decay, (1+s)/(10+s))``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.model.parameters())
        targets = [param.detach().to(ema.dtype) for ema, param in zip(ema_params, model.parameters())]
        torch._foreach_lerp_(ema_params, targets, 1 - decay)


def export(ema: EMA, scheduler: DDPMScheduler, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=ema.model, scheduler=scheduler).save_pretrained(output, safe_serialization=True)


def save_checkpoint(
    path: Path, unwrapped: torch.nn.Module, ema: EMA, optimizer, step: int, generator, noise_generator
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrapped.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": torch.tensor(step),
        "generator": generator.get_state(),
        f"noise_generator_{noise_generator.device.type}": noise_generator.get_state(),
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def adapt_threads(wanted: int) -> None:
    """Use ``wanted`` CPU threads, or one while other processes keep the CPU busy.

    Several threads synchronise at every operation; on an oversubscribed CPU they
    mostly wait for each other, and one thread trains several times faster.
    """
    cores = os.cpu_count() or 1
    torch.set_num_threads(wanted if os.getloadavg()[0] < cores + 0.5 else 1)


def main() -> None:
    args = parse_args()
    adapt_threads(args.threads)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    noise_generator = torch.Generator(accelerator.device).manual_seed(args.seed + 1000 + accelerator.process_index)
    torch.manual_seed(args.seed)  # only the initial weights; data and noise use the generators
    torch.backends.cudnn.benchmark = True

    unet = build_unet(args.channels, args.layers_per_block, args.crop).to(memory_format=torch.channels_last)
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    ema = EMA(unet, args.ema_decay)
    step = 0
    checkpoint = args.checkpoint_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        unet.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        generator.set_state(state["generator"])
        noise_key = f"noise_generator_{noise_generator.device.type}"
        if noise_key in state:
            noise_generator.set_state(state[noise_key])
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    elif args.init_from is not None:
        start_weights = UNet2DModel.from_pretrained(args.init_from, subfolder="unet").state_dict()
        unet.load_state_dict(start_weights)
        ema.model.load_state_dict(start_weights)
        accelerator.print(f"started from the weights in {args.init_from}")
    ema.model.to(accelerator.device)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    regions = [region.to(accelerator.device) for region in multiscale_regions(args.crop)]
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
    log_path = args.output / "loss_log.csv"
    if accelerator.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
        if not log_path.exists() or step == 0:
            with open(log_path, "w", newline="") as handle:
                csv.writer(handle).writerow(["step", "loss", "lr", "elapsed_minutes"])
        accelerator.print(f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, {len(regions)} regions")

    start = time.monotonic()
    last_export = start
    window_sum = torch.zeros((), device=accelerator.device)
    window_count = 0
    # On the main process: a bar on a terminal, none when the output is a file (disable=None).
    hide = None if accelerator.is_main_process else True
    progress = tqdm(total=args.max_steps, initial=step, disable=hide, desc="train")
    unet.train()
    while step < args.max_steps and time.monotonic() - start < args.max_minutes * 60:
        with accelerator.accumulate(unet):
            x0 = sample_batch(regions, args.batch_size, args.crop, generator)
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = torch.randn(x0.shape, generator=noise_generator, device=x0.device)
            t = torch.randint(
                scheduler.config.num_train_timesteps, (x0.shape[0],), generator=noise_generator, device=x0.device
            )
            abar = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            loss = F.mse_loss(unet(xt, t).sample.float(), noise)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup_steps)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        window_sum += loss.detach()
        window_count += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        ema.update(accelerator.unwrap_model(unet), step)
        progress.update(1)
        if step % args.log_every == 0 and accelerator.device.type == "cpu":
            adapt_threads(args.threads)
        if step % args.log_every == 0 and accelerator.is_main_process:
            mean_loss = window_sum.item() / window_count
            window_sum.zero_()
            window_count = 0
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            with open(log_path, "a", newline="") as handle:
                csv.writer(handle).writerow(
                    [step, f"{mean_loss:.5f}", optimizer.param_groups[0]["lr"], f"{(time.monotonic() - start) / 60:.2f}"]
                )
        if time.monotonic() - last_export > args.export_minutes * 60:
            last_export = time.monotonic()
            if accelerator.is_main_process:
                export(ema, scheduler, args.output)
                unwrapped = accelerator.unwrap_model(unet)
                save_checkpoint(checkpoint, unwrapped, ema, optimizer, step, generator, noise_generator)
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(ema, scheduler, args.output)
        save_checkpoint(checkpoint, accelerator.unwrap_model(unet), ema, optimizer, step, generator, noise_generator)
        accelerator.print(f"stopped at step {step}; exported to {args.output}")


if __name__ == "__main__":
    main()
