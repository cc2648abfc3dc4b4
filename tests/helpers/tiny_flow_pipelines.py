"""Tiny random Stable Diffusion 3 and FLUX.1 pipelines, saved by diffusers' own ``save_pretrained``.

Both share a KL autoencoder with f = 2, 4 latent channels, ``scaling_factor = 0.3`` and
``shift_factor = 0.1``; the CLIP tokenizer over single letters of :mod:`tests.helpers.latent_pipelines`
(8 tokens); a T5 tokenizer (a Unigram vocabulary over single letters, built offline) and a one-layer
T5 encoder 32 wide.  SD3: two one-layer ``CLIPTextModelWithProjection`` (8 wide, projecting to 8, so
the pooled embedding is 16 wide), a one-layer ``SD3Transformer2DModel`` (patch 2, 2 heads of 8),
scheduler ``shift = 3``.  FLUX: the one-layer ``CLIPTextModel`` (16 wide) of ``latent_pipelines``, a
``FluxTransformer2DModel`` with one double and one single block and ``guidance_embeds``, scheduler
with dynamic shifting (``base_shift 0.5``, ``max_shift 1.15``, 256 / 4096 tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.latent_pipelines import tiny_text_model

SCALING, SHIFT = 0.3, 0.1
T5_WIDTH = 32
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval().requires_grad_(False)


def tiny_flow_autoencoder():
    from diffusers import AutoencoderKL

    return _seeded(11, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, sample_size=16, scaling_factor=SCALING, shift_factor=SHIFT,
    ))


def tiny_t5(folder: Path):
    """A T5 tokenizer (pad 0, eos 1, unk 2, then word-start and inner letters) and a one-layer T5 encoder."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -1.0) for c in LETTERS] + [(c, -3.0) for c in LETTERS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(folder)
    config = T5Config(vocab_size=len(vocab), d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    return T5Tokenizer.from_pretrained(folder), _seeded(12, lambda: T5EncoderModel(config))


def tiny_clip_with_projection(seed: int, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=8, projection_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return _seeded(seed, lambda: CLIPTextModelWithProjection(config))


def tiny_sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return _seeded(13, lambda: SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16,
    ))


def tiny_flux_transformer(guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel

    return _seeded(14, lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=16,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    ))


def save_tiny_flow_pipelines(root: Path) -> dict:
    """``root / "sd3"``, ``root / "sd3-no-t5"`` (SD3 run without its T5 encoder) and ``root / "flux"``
    pipeline folders; returns their components."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    clip_tokenizer, clip = tiny_text_model(root / "clip-tokenizer")
    t5_tokenizer, t5 = tiny_t5(root / "t5-tokenizer")
    vocab = len(clip_tokenizer)
    parts = {
        "vae": tiny_flow_autoencoder(), "clip_tokenizer": clip_tokenizer, "clip": clip, "t5_tokenizer": t5_tokenizer,
        "t5": t5, "clip_l": tiny_clip_with_projection(15, vocab), "clip_g": tiny_clip_with_projection(16, vocab),
        "sd3": tiny_sd3_transformer(), "flux": tiny_flux_transformer(),
    }
    for folder, encoder, tokenizer in (("sd3", t5, t5_tokenizer), ("sd3-no-t5", None, None)):
        StableDiffusion3Pipeline(
            transformer=parts["sd3"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
            text_encoder=parts["clip_l"], tokenizer=clip_tokenizer, text_encoder_2=parts["clip_g"],
            tokenizer_2=clip_tokenizer, text_encoder_3=encoder, tokenizer_3=tokenizer,
        ).save_pretrained(root / folder)
    dynamic = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                              base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(
        scheduler=dynamic, vae=parts["vae"], text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer, transformer=parts["flux"],
    ).save_pretrained(root / "flux")
    return parts
