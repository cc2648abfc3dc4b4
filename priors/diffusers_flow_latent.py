r"""Latent rectified-flow transformers (Stable Diffusion 3 / 3.5, FLUX.1) as VE priors on their VAE's latents.

The transformer predicts ``v(z_t, t) ~ eps - z0`` on ``z_t = (1 - t) z0 + t eps`` (Esser et al.,
"Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", ICML 2024; diffusers'
``FlowMatchEulerDiscreteScheduler``), so the VE denoiser is :func:`priors.flow.denoise_from_velocity`'s

.. math::
    t = \frac{\sigma}{1 + \sigma}, \qquad z_t = \frac{z}{1 + \sigma}, \qquad
    D(z, \sigma) = z_t - t\, \hat v(z_t, t), \qquad
    \hat v = v(z_t, t; n) + w\,(v(z_t, t; c) - v(z_t, t; n)),

with classifier-free guidance (Ho & Salimans, 2021) of weight ``w`` between the prompt ``c`` and
the negative prompt ``n`` (the empty one unless :meth:`priors.prompt_conditioning.PromptConditioning.conditioning` sets
another); ``D`` is affine in ``v``, so guiding ``v`` guides ``D``.  A prompt's conditioning is two
tensors, the sequence embeddings ``(L, W)`` and the pooled embedding ``(P,)``; the text contract of
:mod:`invsolve.samplers.text_guidance` takes one tensor, so :meth:`~FlowTransformerDenoiser.encode_text`
packs them into ``(1, L + 1, max(W, P))``: the ``L`` sequence rows, then a row whose first ``P``
entries are the pooled embedding (zero padding elsewhere; the padding is never read).

Noise levels: ``sigmas`` is the VE table of the scheduler's training times ``k / T`` (``k = 1..T``),
shifted as the scheduler shifts them (``shift``, or ``e^mu`` with ``use_dynamic_shifting``) and capped
at :data:`priors.flow.T_MAX`; ``flow_times(steps)`` is the grid the diffusers pipeline's
``set_timesteps`` call builds (each family says how it calls it).  A resolution-dependent shift ``mu``
is taken for the pipeline's default image size until :meth:`FlowLatentPrior.set_image_size` names another.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.diffusers_latent import DiffusersLatentPrior
from priors.flow import T_MAX, denoise_from_velocity, shifted_times, sigma_of_time
from priors.prompt_conditioning import PromptConditioning


def resolution_shift(image_seq_len: int, config: Any) -> float:
    """The dynamic shift ``mu``: linear in the number of image tokens, from ``base_shift`` at
    ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (the scheduler config's values;
    Black Forest Labs' FLUX.1 time-shift rule, diffusers ``calculate_shift``)."""
    base_len, max_len = float(config.base_image_seq_len), float(config.max_image_seq_len)
    slope = (float(config.max_shift) - float(config.base_shift)) / (max_len - base_len)
    return float(config.base_shift) + slope * (image_seq_len - base_len)


class FlowTransformerDenoiser(PromptConditioning):
    """A text-conditioned latent flow transformer as a VE denoiser on unpacked latents ``(N, C, h, w)``.

    Subclasses supply :meth:`_prompt_embeddings` (``(sequence (1, L, W), pooled (1, P))`` as their
    diffusers pipeline's ``encode_prompt`` builds them), :meth:`_velocity` (one transformer call) and
    :meth:`_grid` (the ``sigmas`` their pipeline passes to ``set_timesteps``, or ``None``).
    ``patch`` is the latent side a transformer token covers; ``default_latent_size`` the latent side
    of the pipeline's default image (for ``mu``).
    """

    patch: int = 2
    default_latent_size: int = 128

    def __init__(self, transformer: Any, scheduler: Any, channels: int, prompt: str = "", guidance_scale: float = 1.0):
        self.transformer = transformer
        self.scheduler = scheduler
        self.channels = int(channels)
        self.data_shape = None
        self.data_range = None
        config = scheduler.config
        self.train_steps = int(config.num_train_timesteps)
        self.shift = float(config.shift)
        self.dynamic = bool(getattr(config, "use_dynamic_shifting", False))
        self.set_latent_size(self.default_latent_size, self.default_latent_size)
        self.set_prompt(prompt, guidance_scale)

    # -- noise levels ------------------------------------------------------------------------
    def set_latent_size(self, height: int, width: int) -> None:
        """Take the dynamic shift ``mu`` for latents of ``height x width`` (no effect without dynamic shifting)."""
        self.mu = resolution_shift((height // self.patch) * (width // self.patch), self.scheduler.config)
        times = torch.arange(1, self.train_steps + 1, dtype=torch.float64) / self.train_steps
        if self.dynamic:
            times = self.scheduler.time_shift(self.mu, 1.0, times)
        else:
            times = shifted_times(times, self.shift)
        self.sigmas = sigma_of_time(times.clamp(max=T_MAX)).to(torch.float32)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(sigma_of_time(T_MAX))

    def _grid(self, steps: int) -> list[float] | None:
        return None

    def flow_times(self, steps: int) -> list[float]:
        """``steps + 1`` descending flow times ending at 0: the scheduler's ``set_timesteps`` grid as the
        pipeline asks for it (with ``mu`` when the scheduler shifts dynamically), capped at ``T_MAX``."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        options = {"mu": self.mu} if self.dynamic else {}
        grid = self._grid(steps)
        if grid is None:
            self.scheduler.set_timesteps(steps, **options)
        else:
            self.scheduler.set_timesteps(sigmas=grid, **options)
        return self.scheduler.sigmas.double().clamp(max=T_MAX).tolist()

    # -- text --------------------------------------------------------------------------------
    def _prompt_embeddings(self, prompt: str) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def encode_text(self, prompt: str) -> Tensor:
        """The packed conditioning ``(1, L + 1, max(W, P))`` of ``prompt`` (module docstring), in the network's dtype."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        with torch.no_grad():
            sequence, pooled = self._prompt_embeddings(prompt)
        self.sequence_length, self.sequence_width, self.pooled_width = sequence.shape[1], sequence.shape[2], pooled.shape[1]
        width = max(self.sequence_width, self.pooled_width)
        rows = torch.cat([F.pad(sequence, (0, width - sequence.shape[2])), F.pad(pooled, (0, width - pooled.shape[1]))[:, None]], 1)
        return rows.to(device=self.device, dtype=self.dtype)

    def unpack_text(self, embeds: Tensor) -> tuple[Tensor, Tensor]:
        """``(sequence (N, L, W), pooled (N, P))`` of packed embeddings ``(N, L + 1, max(W, P))``."""
        return embeds[:, : self.sequence_length, : self.sequence_width], embeds[:, self.sequence_length, : self.pooled_width]

    # -- denoising ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def _velocity(self, z_t: Tensor, t: Tensor, sequence: Tensor, pooled: Tensor) -> Tensor:
        raise NotImplementedError

    def _rows(self, embeds: Tensor, n: int) -> Tensor:
        if embeds.shape[0] not in (1, n):
            raise ValueError(f"text embeddings have {embeds.shape[0]} rows for a batch of {n}; give 1 or {n}")
        return embeds.to(device=self.device, dtype=self.dtype).expand(n, -1, -1)

    def guided_velocity(self, z_t: Tensor, t: Tensor) -> Tensor:
        """``v_hat(z_t, t)`` (module docstring) in ``z_t``'s device and dtype; ``t`` has shape ``(N,)``."""
        n, w = z_t.shape[0], self.guidance_scale
        inputs, times = z_t.to(device=self.device, dtype=self.dtype), t.to(device=self.device, dtype=self.dtype)
        if w in (0.0, 1.0):
            out = self._velocity(inputs, times, *self.unpack_text(self._rows(self.prompt_embeds if w else self.negative_embeds, n)))
        else:
            both = torch.cat([self._rows(self.negative_embeds, n), self._rows(self.prompt_embeds, n)])
            negative, conditional = self._velocity(torch.cat([inputs, inputs]), torch.cat([times, times]),
                                                   *self.unpack_text(both)).chunk(2)
            out = negative + w * (conditional - negative)
        return out.to(device=z_t.device, dtype=z_t.dtype)

    def denoise(self, z: Tensor, sigma: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(f"the transformer expects latents (N, {self.channels}, h, w), got {tuple(z.shape)}")
        if z.shape[2] % self.patch or z.shape[3] % self.patch:
            raise ValueError(f"latent size {z.shape[2]}x{z.shape[3]} is not a multiple of the transformer's patch {self.patch}")
        sigma = torch.as_tensor(sigma, device=z.device, dtype=z.dtype)
        return denoise_from_velocity(self.guided_velocity, z, sigma.expand(z.shape[0]) if sigma.ndim == 0 else sigma)

    def __repr__(self) -> str:
        shift = f"mu {self.mu:.3g}" if self.dynamic else f"shift {self.shift:g}"
        params = sum(p.numel() for p in self.transformer.parameters()) / 1e6
        return f"{type(self).__name__}({type(self.transformer).__name__}, {shift}, {params:.2f}M params)"


class FlowLatentPrior(DiffusersLatentPrior):
    """A latent flow pipeline (SD3 / FLUX.1): :class:`~priors.diffusers_latent.DiffusersLatentPrior`'s
    ``AutoencoderKL`` contract (``encode(x) = s (E(x) - b)``, ``decode(z) = G(z / s + b)`` with the
    VAE's ``scaling_factor`` ``s`` and ``shift_factor`` ``b``) around a :class:`FlowTransformerDenoiser`.

    Latents are unpacked ``(N, C, H / f, W / f)``; ``H`` and ``W`` must be multiples of ``f`` times
    the transformer's patch.  Always text-conditioned (the text contract of
    :mod:`invsolve.samplers.text_guidance`, with packed embeddings); ``flow_times`` and ``sigmas``
    are the denoiser's.
    """

    denoiser: FlowTransformerDenoiser

    @property
    def text_conditioned(self) -> bool:
        return True

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = super().latent_shape(pixel_shape)
        patch = self.denoiser.patch
        if shape[2] % patch or shape[3] % patch:
            side = self.downsampling * patch
            raise ValueError(f"image size {pixel_shape[2]}x{pixel_shape[3]} is not a multiple of {side} (the "
                             f"autoencoder's factor {self.downsampling} times the transformer's patch {patch})")
        return shape

    def flow_times(self, steps: int) -> list[float]:
        return self.denoiser.flow_times(steps)

    def set_image_size(self, height: int, width: int) -> None:
        """Take the dynamic shift ``mu`` (and the ``sigmas`` table) for images of ``height x width`` pixels."""
        _, _, h, w = self.latent_shape((1, self.image_channels, height, width))
        self.denoiser.set_latent_size(h, w)
        self.sigma_min, self.sigma_max = self.denoiser.sigma_min, self.denoiser.sigma_max

    def __repr__(self) -> str:
        return (f"FlowLatentPrior(KL autoencoder f={self.downsampling}, {self.latent_channels} latent channels, "
                f"scale {self.scaling_factor:g}, shift {self.shift_factor:g}, {self.denoiser!r}, "
                f"prompt {self.denoiser.prompt!r}, guidance {self.denoiser.guidance_scale:g})")
