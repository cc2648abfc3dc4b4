"""A diffusers latent diffusion model (LDM or Stable Diffusion) seen as a VE prior on latents."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from priors.base import LatentPrior
from priors.diffusers_pixel import DiffusersPixelPrior
from priors.prompt_conditioning import PromptConditioning

AUTOENCODER_CLASSES = ("VQModel", "AutoencoderKL")


def encode_prompt(text_encoder: Any, tokenizer: Any, prompt: str) -> Tensor:
    """The text encoder's last hidden states ``(1, tokens, width)`` for ``prompt``, padded to the
    tokenizer's maximum length as Stable Diffusion was trained (Rombach et al., CVPR 2022)."""
    tokens = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0]


class TextConditionedDenoiser(PromptConditioning, DiffusersPixelPrior):
    r"""A text-conditioned ``UNet2DConditionModel`` as a VE denoiser, with classifier-free guidance.

    The VE conversion, timestep interpolation and prediction-type handling are those of
    :class:`DiffusersPixelPrior`; the network output is the guided combination
    (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021)

    .. math::
        \hat f = f(x, t, n) + w\,(f(x, t, c) - f(x, t, n)),

    with ``c`` the embedding of ``prompt`` and ``n`` the negative (null-text) embedding,
    that of the empty prompt unless :meth:`conditioning` sets others.  ``w = 1`` (the
    default) is plain conditional sampling and ``w = 0`` the negative branch alone, each
    with one network pass; any other ``w`` batches the two passes together.  With the empty
    prompt both embeddings coincide, so the prior is the model's unconditional one.
    Embeddings have one row or one per batch row.  Cross-attention UNets accept any latent
    size that is a multiple of their down-sampling factor, so ``data_shape`` is ``None``.
    """

    def __init__(
        self,
        unet: Any,
        alphas_cumprod: Tensor,
        prediction_type: str,
        text_encoder: Any,
        tokenizer: Any,
        prompt: str = "",
        guidance_scale: float = 1.0,
    ):
        super().__init__(unet, alphas_cumprod, prediction_type, data_range=None)
        self.data_shape = None
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.set_prompt(prompt, guidance_scale)

    def encode_text(self, prompt: str) -> Tensor:
        """The embedding ``(1, tokens, width)`` of ``prompt`` (:func:`encode_prompt`) in the network's dtype."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return encode_prompt(self.text_encoder, self.tokenizer, prompt).to(self.dtype)

    def _rows(self, embeds: Tensor, inputs: Tensor) -> Tensor:
        n = inputs.shape[0]
        if embeds.shape[0] not in (1, n):
            raise ValueError(f"text embeddings have {embeds.shape[0]} rows for a batch of {n}; give 1 or {n}")
        return embeds.to(device=inputs.device, dtype=inputs.dtype).expand(n, -1, -1)

    def _call_unet(self, inputs: Tensor, timestep: Tensor) -> Tensor:
        w = self.guidance_scale
        if w in (0.0, 1.0):
            embeds = self._rows(self.prompt_embeds if w == 1.0 else self.negative_embeds, inputs)
            return self.unet(inputs, timestep, encoder_hidden_states=embeds, return_dict=False)[0]
        both = torch.cat([self._rows(self.negative_embeds, inputs), self._rows(self.prompt_embeds, inputs)])
        out = self.unet(torch.cat([inputs, inputs]), torch.cat([timestep, timestep]), encoder_hidden_states=both,
                        return_dict=False)[0]
        negative, conditional = out.chunk(2)
        return negative + w * (conditional - negative)


class DiffusersLatentPrior(LatentPrior):
    r"""A latent diffusion model (Rombach et al., "High-Resolution Image Synthesis with Latent
    Diffusion Models", CVPR 2022): an autoencoder plus a diffusion prior on its scaled latents.

    ``denoiser`` is the latent-space VE denoiser (a :class:`DiffusersPixelPrior` applied to
    latents, or a :class:`TextConditionedDenoiser` for Stable Diffusion); ``autoencoder`` a
    diffusers ``AutoencoderKL`` or ``VQModel``.  With ``s`` the scaling factor and ``b`` the
    shift factor (0 unless the config has one),

    * ``encode(x) = s (E(x) - b)`` where ``E`` is the KL encoder's posterior mean (its mode:
      deterministic and differentiable) or the VQ encoder's pre-quantisation output ``h``,
      which is what LDMs are trained on;
    * ``decode(z) = G(z / s + b)``; a ``VQModel`` quantises inside its decoder, as diffusers'
      LDM pipelines decode, unless ``quantize=False``; its vector quantiser passes
      gradients straight through (van den Oord et al., 2017), so ``decode`` stays
      differentiable for latent methods.  The output is not clamped, so that gradients
      flow; it lies in [-1, 1] up to the autoencoder's reconstruction error.

    ``latent_shape((N, C, H, W)) = (N, latent_channels, H / f, W / f)`` with ``f`` the
    autoencoder's down-sampling factor; ``H`` and ``W`` must be multiples of ``f``.
    ``encode_calls`` and ``decode_calls`` count the images passed through each half.
    """

    def __init__(self, denoiser: DiffusersPixelPrior, autoencoder: Any, quantize: bool = True):
        config = autoencoder.config
        kind = type(autoencoder).__name__
        if kind not in AUTOENCODER_CLASSES:
            raise TypeError(f"autoencoder must be one of {', '.join(AUTOENCODER_CLASSES)}, got {kind}")
        if denoiser.channels != config.latent_channels:
            raise ValueError(
                f"the UNet works on {denoiser.channels} channels but the {kind} has {config.latent_channels} "
                "latent channels; the two do not belong to the same latent diffusion model"
            )
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        self.is_vq = kind == "VQModel"
        self.quantize = quantize
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.image_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsampling = 2 ** (len(config.block_out_channels) - 1)
        self.sigma_min = denoiser.sigma_min
        self.sigma_max = denoiser.sigma_max
        self.data_shape = denoiser.data_shape
        self.encode_calls = 0
        self.decode_calls = 0

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def text_conditioned(self) -> bool:
        return isinstance(self.denoiser, TextConditionedDenoiser)

    @property
    def sigmas(self) -> Tensor:
        """The latent denoiser's timestep table (methods take their official spacing from it)."""
        return self.denoiser.sigmas

    @property
    def prompt(self) -> str | None:
        """The prompt a text-conditioned prior denoises with (``None`` without a text encoder)."""
        return self.denoiser.prompt if self.text_conditioned else None

    @property
    def guidance_scale(self) -> float | None:
        """The classifier-free guidance weight of a text-conditioned prior (``None`` without a text encoder)."""
        return self.denoiser.guidance_scale if self.text_conditioned else None

    def _text_denoiser(self) -> TextConditionedDenoiser:
        if not self.text_conditioned:
            raise ValueError("this latent prior has no text encoder; prompts need a Stable Diffusion pipeline")
        return self.denoiser

    def set_prompt(self, prompt: str = "", guidance_scale: float = 1.0) -> None:
        """Text conditioning of a Stable Diffusion prior (see :class:`TextConditionedDenoiser`)."""
        self._text_denoiser().set_prompt(prompt, guidance_scale)

    def encode_text(self, prompt: str) -> Tensor:
        """The text encoder's embedding ``(1, tokens, width)`` of ``prompt``."""
        return self._text_denoiser().encode_text(prompt)

    def text_conditioning(
        self,
        prompt_embeds: Tensor | None = None,
        negative_embeds: Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> AbstractContextManager[None]:
        """Context manager: denoise with given prompt / negative embeddings and guidance weight
        (:meth:`priors.prompt_conditioning.PromptConditioning.conditioning`), e.g. a tuned prompt (P2L) or a negated
        null text (TReg)."""
        return self._text_denoiser().conditioning(prompt_embeds, negative_embeds, guidance_scale)

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(pixel_shape) != 4 or pixel_shape[1] != self.image_channels:
            raise ValueError(
                f"the autoencoder takes images (N, {self.image_channels}, H, W), got shape {tuple(pixel_shape)}"
            )
        n, _, height, width = pixel_shape
        f = self.downsampling
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the autoencoder's down-sampling factor {f}; "
                f"crop or resize the image to a multiple of {f}"
            )
        return (n, self.latent_channels, height // f, width // f)

    def _autoencoder_input(self, t: Tensor) -> Tensor:
        parameter = next(self.autoencoder.parameters())
        return t.to(device=parameter.device, dtype=parameter.dtype)

    def encode(self, x: Tensor) -> Tensor:
        self.latent_shape(tuple(x.shape))
        self.encode_calls += x.shape[0]
        inputs = self._autoencoder_input(x)
        if self.is_vq:
            h = self.autoencoder.encode(inputs).latents
        else:
            h = self.autoencoder.encode(inputs).latent_dist.mode()
        return ((h - self.shift_factor) * self.scaling_factor).to(device=x.device, dtype=x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        self._check_latent(z)
        self.decode_calls += z.shape[0]
        h = self._autoencoder_input(z) / self.scaling_factor + self.shift_factor
        if self.is_vq:
            out = self.autoencoder.decode(h, force_not_quantize=not self.quantize).sample
        else:
            out = self.autoencoder.decode(h).sample
        return out.to(device=z.device, dtype=z.dtype)

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must have shape (N, {self.latent_channels}, h, w), got {tuple(z.shape)}; "
                "map pixel shapes with latent_shape()"
            )

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        self._check_latent(x)
        return self.denoiser.denoise(x, sigma)

    def __repr__(self) -> str:
        kind = "VQ" if self.is_vq else "KL"
        text = ""
        if self.text_conditioned:
            text = f", prompt {self.denoiser.prompt!r}, guidance {self.denoiser.guidance_scale:g}"
        return (
            f"DiffusersLatentPrior({kind} autoencoder f={self.downsampling}, {self.latent_channels} latent channels, "
            f"scale {self.scaling_factor:g}, denoiser {self.denoiser!r}{text})"
        )
