"""A tiny Stable-Diffusion-type pipeline and a matching tiny CLIP image encoder, saved to disk.

The pipeline reuses the components of :mod:`tests.helpers.latent_pipelines` (KL autoencoder with
f = 2, a one-layer CLIP text encoder 16 wide over single letters, a cross-attention
UNet2DConditionModel, DDPM schedule of ``T`` steps with SD's ``steps_offset = 1``), saved by
diffusers' own ``StableDiffusionPipeline.save_pretrained``.  The CLIP vision model projects
to 16, the text width, as ViT-L/14 does to Stable Diffusion v1's 768.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.latent_pipelines import T, tiny_autoencoder, tiny_conditional_unet, tiny_text_model

CLIP_IMAGE_SIZE = 16


def tiny_clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, patch_size=8, projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = CLIPVisionModelWithProjection(config)
    return model.eval().requires_grad_(False)


def save_tiny_sd(root: Path) -> dict:
    """``root / "sd"`` (pipeline) and ``root / "clip"`` (CLIPVisionModelWithProjection); returns the parts."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    tokenizer, encoder = tiny_text_model(root / "tokenizer-files")
    parts = {"vae": tiny_autoencoder("kl"), "unet": tiny_conditional_unet(), "tokenizer": tokenizer,
             "text_encoder": encoder, "clip": tiny_clip_vision()}
    scheduler = DDPMScheduler(num_train_timesteps=T, clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=encoder, tokenizer=tokenizer, unet=parts["unet"], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "sd")
    parts["clip"].save_pretrained(root / "clip")
    return parts
