"""Latent DPS: diffusion posterior sampling through the decoder of a latent diffusion model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Problem, register
from invsolve.samplers.dps import DPS
from invsolve.samplers.latent import latent_problem


@register
@dataclass
class LatentDPS(DPS):
    r"""DPS in the latent space of a latent diffusion model (Chung et al., ICLR 2023, applied to
    latents as the "Latent-DPS" baseline of Rout et al., NeurIPS 2023 and Song et al., ICLR 2024).

    The DPS update with the measurement seen through the decoder ``G``:

    .. math::
        z_{i-1} = z' - \zeta \sqrt{(1+\sigma_i^2)(1+\sigma_{i-1}^2)}\,
        \nabla_{z_i} \lVert y - A(G(D(z_i, \sigma_i))) \rVert_2 ,

    with ``z'`` the unconditional ancestral step (VE DDIM, ``eta``) and the norm per sample;
    the result is ``G(z_0)``.  It is :class:`~invsolve.samplers.dps.DPS` run on the latent
    view of the problem, so ``step_size`` and its defaults (0.3 blur / super-resolution,
    0.5 inpainting, 1.0 phase retrieval, from ``operator.kind``) are DPS's.  Cost per step:
    1 NFE, one decoder pass and one backprop through decoder and network.
    """

    name = "latent_dps"
    needs = ("vjp", "latent")
    summary = "DPS through the decoder of a latent diffusion prior"

    def run(self, problem: Problem) -> Tensor:
        z = super().run(latent_problem(problem))
        with torch.no_grad():
            return problem.prior.decode(z)
