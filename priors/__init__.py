"""Diffusion priors: analytic Gaussian / mixture priors and pretrained diffusers models."""

from priors.base import LatentPrior, Prior, is_latent_prior, is_prior
from priors.diffusers_latent import DiffusersLatentPrior, TextConditionedDenoiser
from priors.diffusers_pixel import DiffusersPixelPrior
from priors.gaussian import GaussianMixturePrior, GaussianPrior
from priors.loading import load_prior
from priors.tiled import Tiled, TiledLatent

__all__ = [
    "DiffusersLatentPrior",
    "DiffusersPixelPrior",
    "GaussianMixturePrior",
    "GaussianPrior",
    "LatentPrior",
    "Prior",
    "TextConditionedDenoiser",
    "Tiled",
    "TiledLatent",
    "is_latent_prior",
    "is_prior",
    "load_prior",
]

from priors.adm import ADMPrior, load_adm, resolve_adm_checkpoint  # noqa: E402
from priors.adm_unet import ADMConfig, ADMUNet  # noqa: E402
from priors.vp import VPDenoiser  # noqa: E402

__all__ += ["ADMConfig", "ADMPrior", "ADMUNet", "VPDenoiser", "load_adm", "resolve_adm_checkpoint"]
