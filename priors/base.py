"""Prior contracts.

Any object with ``denoise(x, sigma)``, ``sigma_min`` and ``sigma_max`` is a prior
(duck typing; see :func:`is_prior`).  The classes here help but are not required.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Prior(ABC):
    """A variance-exploding denoiser ``D(x, sigma) ≈ E[x0 | x0 + sigma * eps = x]``.

    ``x`` has shape ``(N, *data_shape)`` and ``sigma`` shape ``(N,)``; the result
    has the shape of ``x``.  By Tweedie's formula the score of the noised density
    ``p_sigma`` is ``(D(x, sigma) - x) / sigma^2`` (Efron 2011; Karras et al. 2022).
    ``data_shape`` is ``None`` for fully convolutional priors that take any size.

    Optional attributes that samplers read when present:

    * ``data_range``: ``(low, high)`` when the clean data lie in that box (images:
      ``(-1, 1)``), ``None`` when unbounded.  Methods whose official code clamps the
      denoised estimate (DPS's ``clip_denoised=True``) clamp to it; without it they
      never clamp.
    * ``clip_sample``: the prior's own sampler clamps its ``x0`` estimate to
      ``data_range`` (a diffusers scheduler's ``clip_sample``), so every method does.
    * ``sigmas``: for a model trained on discrete timesteps, the ascending 1-D table
      of its noise levels (``sigmas[t]`` for DDPM step ``t``).  Methods pick their
      official timestep spacing from it; priors without one get the documented
      fallback grid (:meth:`invsolve.samplers.Problem.timestep_sigmas`).
    """

    sigma_min: float
    sigma_max: float
    data_shape: tuple[int, ...] | None = None
    data_range: tuple[float, float] | None = None
    clip_sample: bool = False

    @abstractmethod
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Posterior mean of the clean signal given ``x`` at noise level ``sigma``."""

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2``."""
        return (self.denoise(x, sigma) - x) / expand_sigma(sigma, x) ** 2

    @property
    def device(self) -> torch.device | None:
        """Where the network lives; ``None`` for priors that follow their input."""
        return None

    @property
    def dtype(self) -> torch.dtype | None:
        """The network's dtype; ``None`` for priors that follow their input."""
        return None


class LatentPrior(Prior):
    """A prior in the latent space of an autoencoder.

    ``denoise`` acts on latents ``z``; ``decode(z)`` gives pixels in [-1, 1] and
    ``encode(x)`` the latent of an image; ``latent_shape(pixel_shape)`` maps shapes.
    """

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Latent of pixels ``x`` in [-1, 1]."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Pixels in [-1, 1] of latents ``z``."""

    @abstractmethod
    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Latent shape for a pixel batch shape."""


def is_prior(obj: object) -> bool:
    """Whether ``obj`` satisfies the prior protocol."""
    return all(hasattr(obj, name) for name in ("denoise", "sigma_min", "sigma_max"))


def is_latent_prior(obj: object) -> bool:
    """Whether ``obj`` also satisfies the latent-prior protocol."""
    return is_prior(obj) and all(hasattr(obj, n) for n in ("encode", "decode", "latent_shape"))


def is_restorer_prior(obj: object) -> bool:
    """Whether ``obj`` is a restoration-network prior (:class:`priors.restorer.RestorerPrior`
    protocol: ``prior_kind == "restorer"``, ``restore(v)`` and ``degradation``)."""
    return getattr(obj, "prior_kind", None) == "restorer" and all(hasattr(obj, n) for n in ("restore", "degradation"))


def is_proximal_prior(obj: object) -> bool:
    """Whether ``obj`` is a proximal-operator prior (:class:`priors.lpn.LPNPrior` protocol:
    ``prior_kind == "proximal"`` and ``prox(x)``)."""
    return getattr(obj, "prior_kind", None) == "proximal" and hasattr(obj, "prox")


def expand_sigma(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape per-item ``sigma`` of shape ``(N,)`` to broadcast against ``x``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
