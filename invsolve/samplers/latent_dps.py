"""Latent DPS: diffusion posterior sampling through the decoder of a latent diffusion model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.psld import PSLD_LDM_TASK_DEFAULTS, PSLD_SD_TASK_DEFAULTS, psld_sampling, table_for_model


def _omega_only(table: Mapping[str, Defaults]) -> Mapping[str, Defaults]:
    return MappingProxyType({task: Defaults({"omega": row.options["omega"]}, row.source) for task, row in table.items()})


#: PSLD's run scripts' ``omega``, for Stable Diffusion and for the other LDMs.
LATENT_DPS_SD_TASK_DEFAULTS = _omega_only(PSLD_SD_TASK_DEFAULTS)
LATENT_DPS_LDM_TASK_DEFAULTS = _omega_only(PSLD_LDM_TASK_DEFAULTS)


@register
@dataclass
class LatentDPS(Method):
    r"""DPS in the latent space of a latent diffusion model: the "Latent-DPS" baseline of Rout et al.
    (PSLD, NeurIPS 2023) and Song et al. (ReSample, ICLR 2024).

    Official code: neither repository has a separate latent-DPS script; this is LituRout/PSLD's
    sampler (``stable-diffusion/ldm/models/diffusion/psld.py``) without its gluing term
    (:func:`~invsolve.samplers.psld.psld_sampling` with ``gamma = 0``; ReSample's
    ``ldm_inverse/condition_methods.py`` only supplies the DPS step inside ReSample).  With
    ``z0 = z - sigma eps`` and decoder ``G``:

    .. math::
        z' = \mathrm{DDIM}_\eta(z_0, \epsilon) - \omega \sqrt{(1+\sigma^2)(1+\sigma'^2)}\,
        \nabla_{z} \lVert A G(z_0) + \sigma_y n - y \rVert ,

    per-sample norms, ``n`` fresh noise when ``residual_noise`` (the code's ``noiser``).
    Defaults as PSLD's run scripts: 1000 CompVis DDIM steps, ``eta = 0``, ``omega`` from
    :func:`~invsolve.samplers.psld.table_for_model` (Stable Diffusion 1, box inpainting 0.1;
    other LDMs 0.1, super-resolution 0.9).  The result is the decoded last state.
    """

    name = "latent_dps"
    needs = ("vjp", "latent")
    default_steps = 1000
    cost = "1 network call, 1 decoder pass and 1 backprop through decoder and network per step"
    summary = "DPS through the decoder of a latent diffusion prior (PSLD's sampler without gluing)"

    task_defaults = LATENT_DPS_SD_TASK_DEFAULTS

    omega: float = 1.0
    eta: float = 0.0
    residual_noise: bool = True

    @classmethod
    def defaults_table(cls, prior: Any = None) -> Mapping[str, Defaults]:
        return table_for_model(prior, LATENT_DPS_SD_TASK_DEFAULTS, LATENT_DPS_LDM_TASK_DEFAULTS)

    def resolved(self, problem: Problem) -> LatentDPS:
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        return self

    def run(self, problem: Problem) -> Tensor:
        return psld_sampling(problem, self.omega, 0.0, self.eta, self.residual_noise)
