"""An analytic text-conditioned latent prior: a Gaussian mixture whose weights follow an embedding.

Latents ``z`` (d,) have the prior ``p(z | c) = sum_k softmax(c)_k N(z; mu_k, v I)``: the
embedding ``c`` (K logits, one row per sample or one shared) sets the component weights.
Its denoiser is the mixture's exact posterior mean (shared isotropic variance):
``gamma = softmax(log softmax(c) + (z.mu_k - |mu_k|^2 / 2) / (v + sigma^2))``,
``D = v / (v + sigma^2) z + sigma^2 / (v + sigma^2) sum_k gamma_k mu_k``, differentiable in
``c``; classifier-free guidance combines two such denoisers.  The "autoencoder" is linear
and orthonormal, ``decode(z) = Q z``, ``encode(x) = Q^T x``, so the posterior of ``z`` under
``y = A Q z + n`` is :meth:`mixture`'s exact ``posterior(A Q, y, sigma_y)``.  The timestep
table is the DDPM linear schedule (1000 steps), so methods run on their official grids.
The prior implements the text-prior contract of :mod:`invsolve.samplers.text_guidance`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from priors import GaussianMixturePrior, LatentPrior
from priors.adm import linear_alphas_cumprod

F64 = torch.float64
#: The logit a named prompt puts on its component.
PROMPT_LOGIT = 3.0


class TextMixtureLatentPrior(LatentPrior):
    text_conditioned = True

    def __init__(self, means: torch.Tensor, variance: float, Q: torch.Tensor):
        self.means, self.variance, self.Q = means, variance, Q
        abar = linear_alphas_cumprod(1000)
        self.sigmas = ((1 - abar) / abar).sqrt()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        self.data_shape = (means.shape[1],)
        self.prompt = ""
        self.embeds = self.negative = self.encode_text("")
        self.guidance_scale = 1.0
        self.conditioned_on: list[torch.Tensor] = []

    def encode_text(self, prompt: str) -> torch.Tensor:
        """``"component k"`` puts :data:`PROMPT_LOGIT` on component ``k``; anything else is uniform."""
        logits = torch.zeros(1, self.means.shape[0], dtype=F64)
        names = [f"component {k}" for k in range(self.means.shape[0])]
        if prompt in names:
            logits[0, names.index(prompt)] = PROMPT_LOGIT
        return logits

    @contextmanager
    def text_conditioning(self, prompt_embeds=None, negative_embeds=None, guidance_scale=None):
        saved = (self.embeds, self.negative, self.guidance_scale)
        self.embeds = saved[0] if prompt_embeds is None else prompt_embeds
        self.negative = saved[1] if negative_embeds is None else negative_embeds
        self.guidance_scale = saved[2] if guidance_scale is None else guidance_scale
        try:
            yield
        finally:
            self.embeds, self.negative, self.guidance_scale = saved

    def _mixture_mean(self, z: torch.Tensor, sigma: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1).to(z) ** 2
        v = self.variance + s2
        mu = self.means.to(z)
        gamma = torch.softmax(torch.log_softmax(logits.to(z), -1) + (z @ mu.T - 0.5 * (mu**2).sum(1)) / v, dim=1)
        return self.variance / v * z + s2 / v * (gamma @ mu)

    def denoise(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.conditioned_on.append(self.embeds.detach().clone())
        conditional = self._mixture_mean(z, sigma, self.embeds)
        if self.guidance_scale == 1.0:
            return conditional
        negative = self._mixture_mean(z, sigma, self.negative)
        return negative + self.guidance_scale * (conditional - negative)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.Q.to(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.Q.to(z).T

    def latent_shape(self, pixel_shape):
        return (pixel_shape[0], self.Q.shape[1])

    def mixture(self, logits: torch.Tensor) -> GaussianMixturePrior:
        """The latent prior ``p(z | c)`` for one row of logits."""
        return GaussianMixturePrior(torch.softmax(logits.reshape(-1), 0), self.means, self.variance)


def four_corner_prior(seed: int = 0) -> TextMixtureLatentPrior:
    """Components at (±2, ±2) with variance 0.25, behind a random orthonormal Q (3 pixels, float64)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]], dtype=F64)
    basis, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    return TextMixtureLatentPrior(means, 0.25, basis[:, :2])
