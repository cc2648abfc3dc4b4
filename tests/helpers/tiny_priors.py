"""A tiny attention-free diffusers prior that command-line tests save and load."""

from pathlib import Path

import torch


def save_tiny_pixel_prior(folder: Path, sample_size: int) -> Path:
    """Save a 2-level UNet2DModel (widths 8, 16; no attention, so any image size) and a
    100-step DDPM scheduler as a plain diffusers folder; weights from ``torch.manual_seed(0)``."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # weight initialisation only; the commands under test use generators
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, add_attention=False,
    )
    unet.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=100).save_pretrained(folder)
    return folder
