"""Diffusion priors: analytic Gaussian / mixture priors, diffusers pixel and latent models,
ADM checkpoints, flow-matching (velocity) models, the bundled default, and wrappers (tiling, clipping); restoration networks
and learned proximal networks as priors."""

from priors.adm import ADMPrior, load_adm, resolve_adm_checkpoint
from priors.adm_unet import ADMConfig, ADMUNet
from priors.base import LatentPrior, Prior, is_latent_prior, is_prior, is_proximal_prior, is_restorer_prior
from priors.clipped import ClippedPrior
from priors.diffusers_flow_latent import FlowLatentPrior
from priors.diffusers_flow_pixel import DiffusersFlowPixelPrior
from priors.diffusers_latent import DiffusersLatentPrior, TextConditionedDenoiser
from priors.diffusers_pixel import DiffusersPixelPrior
from priors.flow import VelocityPrior, from_velocity
from priors.gaussian import GaussianMixturePrior, GaussianPrior
from priors.image_format import fixed_size, image_mode
from priors.loading import load_prior
from priors.lpn import ConvexPotential, LPNPrior
from priors.network_priors import load_network_prior
from priors.restorer import ResidualUpsampler, RestorerPrior
from priors.tiled import Tiled, TiledLatent
from priors.vp import VPDenoiser

__all__ = [
    "ADMConfig",
    "ADMPrior",
    "ADMUNet",
    "ClippedPrior",
    "ConvexPotential",
    "DiffusersFlowPixelPrior",
    "DiffusersLatentPrior",
    "DiffusersPixelPrior",
    "FlowLatentPrior",
    "GaussianMixturePrior",
    "GaussianPrior",
    "LPNPrior",
    "LatentPrior",
    "Prior",
    "ResidualUpsampler",
    "RestorerPrior",
    "TextConditionedDenoiser",
    "Tiled",
    "TiledLatent",
    "VPDenoiser",
    "VelocityPrior",
    "fixed_size",
    "from_velocity",
    "image_mode",
    "is_latent_prior",
    "is_prior",
    "is_proximal_prior",
    "is_restorer_prior",
    "load_adm",
    "load_network_prior",
    "load_prior",
    "resolve_adm_checkpoint",
]
