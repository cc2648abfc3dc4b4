"""Diffusion priors: analytic Gaussian / mixture priors and pretrained diffusers models."""

from priors.base import LatentPrior, Prior, is_latent_prior, is_prior
from priors.gaussian import GaussianMixturePrior, GaussianPrior

__all__ = [
    "GaussianMixturePrior",
    "GaussianPrior",
    "LatentPrior",
    "Prior",
    "is_latent_prior",
    "is_prior",
]
