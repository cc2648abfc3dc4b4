r"""FLUX.1 (``FluxTransformer2DModel``) as a latent flow prior on unpacked latents.

Black Forest Labs, FLUX.1.  The reference code (github ``black-forest-labs/flux``, ``src/flux/sampling.py``)
fixes the packing and position ids (``prepare``), the Euler loop ``img + (t_prev - t) v`` with the guidance
vector (``denoise``) and the resolution shift (``get_lin_function``, ``time_shift``, ``get_schedule``: its
``linspace(1, 0, steps + 1)`` shifted is diffusers' grid below).  The checkpoints' layout and the text
details are those of diffusers' ``FluxPipeline`` (``pipelines/flux/pipeline_flux.py``, diffusers 0.42):

* packing: latents ``(N, C, h, w)`` become ``h w / 4`` tokens of ``4 C`` values, one per 2x2 patch,
  ordered row-major over patches, each token channel-major then row then column within the patch
  (:func:`pack_latents`, :func:`unpack_latents`); token ``(i, j)`` has position id ``(0, i, j)`` and
  every text token ``(0, 0, 0)`` (:func:`latent_position_ids`).
* text: the CLIP ``pooler_output`` (``CLIPTextModel``) is the pooled embedding, T5's
  ``max_sequence_length`` (512) token embeddings the sequence.
* velocity: ``transformer(hidden_states=tokens, timestep=t, guidance=g, pooled_projections=...,
  encoder_hidden_states=..., txt_ids=..., img_ids=...)`` (the transformer scales ``t`` and ``g`` by
  1000 itself), unpacked.  ``g`` is the distilled guidance strength of models with
  ``guidance_embeds`` (FLUX.1-dev; ``FluxDenoiser.embedded_guidance``, the pipeline's default 3.5),
  absent otherwise (FLUX.1-schnell).  Two-pass classifier-free guidance with the empty negative prompt
  is ``guidance_scale`` (the pipeline's ``true_cfg_scale``; default 1, none), as for every text prior.
* grid: ``scheduler.set_timesteps(sigmas=linspace(1, 1 / steps, steps), mu=mu)``, ``mu`` from the
  image token count (:func:`priors.diffusers_flow_latent.resolution_shift`).  The pipeline's default
  image is 128 latent pixels a side (1024 x 1024 with FLUX's 8x VAE): 4096 tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priors.diffusers_flow_latent import FlowTransformerDenoiser
from priors.sd3 import _device, _token_ids

#: ``FluxPipeline``'s default T5 sequence length and distilled guidance strength.
FLUX_MAX_SEQUENCE_LENGTH = 512
FLUX_EMBEDDED_GUIDANCE = 3.5


def pack_latents(z: Tensor) -> Tensor:
    """``(N, C, h, w) -> (N, (h / 2)(w / 2), 4 C)``: one token per 2x2 patch (module docstring)."""
    n, c, h, w = z.shape
    patches = z.reshape(n, c, h // 2, 2, w // 2, 2)  # (n, c, i, dy, j, dx)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents` for latents of ``height x width``."""
    n, _, features = tokens.shape
    c = features // 4
    patches = tokens.reshape(n, height // 2, width // 2, c, 2, 2)  # (n, i, j, c, dy, dx)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)


def latent_position_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``((h / 2)(w / 2), 3)`` rows ``(0, i, j)`` of the patch tokens, row-major."""
    i, j = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(i), i, j], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


class FluxDenoiser(FlowTransformerDenoiser):
    """A ``FluxTransformer2DModel`` with its CLIP and T5 encoders as a VE denoiser on unpacked latents.

    ``text_encoders`` = ``(clip, t5)`` and ``tokenizers`` alike; ``embedded_guidance`` is the
    distilled guidance strength (used when the transformer has ``guidance_embeds``).
    """

    patch = 2
    default_latent_size = 128

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        text_encoders: tuple[Any, Any],
        tokenizers: tuple[Any, Any],
        prompt: str = "",
        guidance_scale: float = 1.0,
        embedded_guidance: float = FLUX_EMBEDDED_GUIDANCE,
        max_sequence_length: int = FLUX_MAX_SEQUENCE_LENGTH,
    ):
        config = transformer.config
        if config.in_channels % 4:
            raise ValueError(f"a FLUX transformer takes 4 C packed channels, got in_channels={config.in_channels}")
        self.text_encoders, self.tokenizers = tuple(text_encoders), tuple(tokenizers)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance_embeds = bool(config.guidance_embeds)
        self.embedded_guidance = float(embedded_guidance)
        super().__init__(transformer, scheduler, config.in_channels // 4, prompt, guidance_scale)

    def _prompt_embeddings(self, prompt: str) -> tuple[Tensor, Tensor]:
        (clip, t5), (clip_tokenizer, t5_tokenizer) = self.text_encoders, self.tokenizers
        pooled = clip(_token_ids(clip_tokenizer, prompt, clip_tokenizer.model_max_length, _device(clip))).pooler_output
        sequence = t5(_token_ids(t5_tokenizer, prompt, self.max_sequence_length, _device(t5)))[0]
        return sequence, pooled.to(sequence)

    def _grid(self, steps: int) -> list[float]:
        return torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()

    def _velocity(self, z_t: Tensor, t: Tensor, sequence: Tensor, pooled: Tensor) -> Tensor:
        n, _, height, width = z_t.shape
        guidance = torch.full((n,), self.embedded_guidance, device=z_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(z_t),
            timestep=t,
            guidance=guidance if self.guidance_embeds else None,
            pooled_projections=pooled,
            encoder_hidden_states=sequence,
            txt_ids=torch.zeros(sequence.shape[1], 3, device=z_t.device, dtype=z_t.dtype),
            img_ids=latent_position_ids(height, width, z_t.device, z_t.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, height, width)
