r"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``) as a latent flow prior.

Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", ICML 2024.
Stability AI's reference code (github ``Stability-AI/sd3.5``, ``sd3_impls.py``) fixes the model's
conventions: network timestep ``1000 t`` (``ModelSamplingDiscreteFlow.timestep``), ``x0 = z_t - t v``
(``calculate_denoised``), latents ``(h - shift_factor) * scale_factor`` (``SD3LatentFormat``) and
guidance ``neg + w (pos - neg)`` (``CFGDenoiser``).  The text and grid details below are those of
diffusers' ``StableDiffusion3Pipeline`` (``pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py``,
diffusers 0.42), which reads the same checkpoints:

* text: CLIP-L and CLIP-G (``CLIPTextModelWithProjection``) give the penultimate hidden states,
  concatenated along the width and zero-padded (or cut) to T5's width, then followed by T5's
  ``max_sequence_length`` (256) token embeddings; the pooled embedding is the two projected
  ``text_embeds`` side by side.  Without a T5 encoder its rows are zeros of the transformer's
  ``joint_attention_dim``.  Both CLIP tokenizers pad to the first one's ``model_max_length``.
* velocity: ``transformer(hidden_states=z_t, timestep=1000 t, encoder_hidden_states=seq,
  pooled_projections=pooled).sample`` on unpacked latents (the transformer patches them itself).
* grid: ``scheduler.set_timesteps(steps)`` (with ``mu`` from the latent token count when the
  scheduler shifts dynamically), i.e. ``shift`` applied to ``linspace(1, t_min, steps)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.diffusers_flow_latent import FlowTransformerDenoiser

#: ``StableDiffusion3Pipeline``'s default T5 sequence length.
SD3_MAX_SEQUENCE_LENGTH = 256


def _token_ids(tokenizer: Any, prompt: str, length: int, device: torch.device) -> Tensor:
    tokens = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return tokens.input_ids.to(device)


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


class SD3Denoiser(FlowTransformerDenoiser):
    """An ``SD3Transformer2DModel`` with its three text encoders as a VE denoiser on latents.

    ``text_encoders`` = ``(clip_l, clip_g, t5 or None)`` and ``tokenizers`` alike.
    """

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        text_encoders: tuple[Any, Any, Any],
        tokenizers: tuple[Any, Any, Any],
        prompt: str = "",
        guidance_scale: float = 1.0,
        max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH,
    ):
        config = transformer.config
        self.patch = int(config.patch_size)
        self.default_latent_size = int(config.sample_size)
        self.text_encoders, self.tokenizers = tuple(text_encoders), tuple(tokenizers)
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(transformer, scheduler, config.in_channels, prompt, guidance_scale)

    def _prompt_embeddings(self, prompt: str) -> tuple[Tensor, Tensor]:
        clip_length = self.tokenizers[0].model_max_length
        hidden, pooled = [], []
        for encoder, tokenizer in zip(self.text_encoders[:2], self.tokenizers[:2]):
            out = encoder(_token_ids(tokenizer, prompt, clip_length, _device(encoder)), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])
        t5, t5_tokenizer = self.text_encoders[2], self.tokenizers[2]
        if t5 is None:
            width = self.transformer.config.joint_attention_dim
            t5_rows = torch.zeros(1, self.max_sequence_length, width, device=hidden[0].device, dtype=hidden[0].dtype)
        else:
            t5_rows = t5(_token_ids(t5_tokenizer, prompt, self.max_sequence_length, _device(t5)))[0]
        clip = torch.cat([h.to(t5_rows) for h in hidden], dim=-1)
        clip = F.pad(clip, (0, t5_rows.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5_rows], dim=-2), torch.cat([p.to(t5_rows) for p in pooled], dim=-1)

    def _velocity(self, z_t: Tensor, t: Tensor, sequence: Tensor, pooled: Tensor) -> Tensor:
        return self.transformer(hidden_states=z_t, timestep=t * 1000, encoder_hidden_states=sequence,
                                pooled_projections=pooled, return_dict=False)[0]
