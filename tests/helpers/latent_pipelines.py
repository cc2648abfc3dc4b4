"""Tiny latent diffusion components: KL / VQ autoencoders, UNets, a one-layer CLIP text model,
and LDM / Stable Diffusion folders saved by diffusers' own ``save_pretrained``; plus the DDPM
``x0`` formula and the linear 1000-step table that expectations are written from."""

from __future__ import annotations

import json

import torch

T = 100
#: Two computations of one float32 network output (fused vs separate calls, other batch shapes)
#: agree to float32 rounding of activations of size ~1, amplified through the layers; the
#: project rule is >= 1e-4.  The x0 formulas multiply the network output by sigma < 1 at the
#: timesteps used here, so no larger scale is needed.
NETWORK_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def tiny_autoencoder(kind: str):
    from diffusers import AutoencoderKL, VQModel

    common = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        if kind == "vq":
            model = VQModel(latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, scaling_factor=0.5, **common)
        else:
            model = AutoencoderKL(latent_channels=4, sample_size=16, scaling_factor=0.3, **common)
    return model.eval().requires_grad_(False)


def tiny_latent_unet(channels: int):
    from diffusers import UNet2DModel

    with torch.random.fork_rng():
        torch.manual_seed(2)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2,
            add_attention=False,
        )
    return unet.eval().requires_grad_(False)


def tiny_text_model(folder):
    """A CLIP tokenizer over single letters and a one-layer CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c + "</w>": i + 2 for i, c in enumerate(letters)})
    vocab.update({c: i + 28 for i, c in enumerate(letters)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)
        encoder = CLIPTextModel(config)
    return tokenizer, encoder.eval().requires_grad_(False)


def tiny_conditional_unet():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(4)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            norm_num_groups=4,
            attention_head_dim=4,
        )
    return unet.eval().requires_grad_(False)


def save_latent_pipelines(root) -> dict:
    """LDM (VQ) and Stable Diffusion folders by diffusers' own save_pretrained; a KL LDM by hand."""
    from diffusers import DDPMScheduler, LDMPipeline, StableDiffusionPipeline

    parts = {"vq": tiny_autoencoder("vq"), "kl": tiny_autoencoder("kl"), "unet3": tiny_latent_unet(3),
             "unet4": tiny_latent_unet(4), "cond": tiny_conditional_unet()}
    scheduler = DDPMScheduler(num_train_timesteps=T, clip_sample=False, steps_offset=1)
    LDMPipeline(vqvae=parts["vq"], unet=parts["unet3"], scheduler=scheduler).save_pretrained(root / "ldm-vq")
    kl = root / "ldm-kl"
    parts["kl"].save_pretrained(kl / "vae")
    parts["unet4"].save_pretrained(kl / "unet")
    DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction", clip_sample=False).save_pretrained(kl / "scheduler")
    index = {"_class_name": "LDMPipeline", "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (kl / "model_index.json").write_text(json.dumps(index))
    tokenizer, encoder = tiny_text_model(root / "tokenizer-files")
    parts["tokenizer"], parts["text_encoder"] = tokenizer, encoder
    StableDiffusionPipeline(
        vae=parts["kl"], text_encoder=encoder, tokenizer=tokenizer, unet=parts["cond"], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "sd")
    return parts


def linear_abar() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    return torch.cumprod(1 - betas, 0).double()


def ddpm_x0(out: torch.Tensor, x: torch.Tensor, abar: float, prediction: str) -> torch.Tensor:
    """``x0`` from a network output at ``x_vp = sqrt(abar) x`` (Ho et al. 2020; Salimans & Ho 2022)."""
    x_vp = abar**0.5 * x
    if prediction == "epsilon":
        return (x_vp - (1 - abar) ** 0.5 * out) / abar**0.5
    return abar**0.5 * x_vp - (1 - abar) ** 0.5 * out


def table_sigma(t: int) -> tuple[float, float]:
    abar = float(linear_abar()[t])
    return abar, ((1 - abar) / abar) ** 0.5
