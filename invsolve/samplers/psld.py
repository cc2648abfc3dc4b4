"""PSLD: posterior sampling with latent diffusion and the gluing term."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.latent import latent_problem, ldm_ddim_levels, network_epsilon, vp_scale
from invsolve.samplers.updates import ddim_step, ve_step_factor

_RUN = "LituRout/PSLD stable-diffusion/run/"


def _row(omega: float, gamma: float, script: str) -> Defaults:
    return Defaults({"omega": omega, "gamma": gamma}, _RUN + script)


#: ``(omega, gamma)`` of the Stable Diffusion run scripts (``--omega`` / ``--gamma``; the
#: scripts that pass neither run ``scripts/inverse.py``'s defaults, 1 / 0.1).
PSLD_SD_TASK_DEFAULTS = MappingProxyType(
    {
        "super_resolution": _row(1.0, 0.1, "inverse.sh"),
        "gaussian_blur": _row(1.0, 0.1, "inverse_gb.sh"),
        "motion_blur": _row(1.0, 0.1, "inverse_mb.sh"),
        "random_inpainting": _row(1.0, 0.1, "inverse_rip.sh"),
        "box_inpainting": _row(0.1, 0.01, "inverse_bip.sh"),
    }
)
#: The same for the other latent diffusion models (``*_ldm.sh``, LDM FFHQ 256): 0.1 / 0.1 for
#: every blur and mask, ``omega = 0.9`` for super-resolution.
PSLD_LDM_TASK_DEFAULTS = MappingProxyType(
    {
        "super_resolution": _row(0.9, 0.1, "inverse_sr_ldm.sh"),
        "blur": _row(0.1, 0.1, "inverse_gb_ldm.sh, inverse_mb_ldm.sh"),
        "inpainting": _row(0.1, 0.1, "inverse_bip_ldm.sh, inverse_rip_ldm.sh"),
    }
)


def table_for_model(
    prior: Any, stable_diffusion: Mapping[str, Defaults], other: Mapping[str, Defaults]
) -> Mapping[str, Defaults]:
    """The Stable Diffusion scripts' table for text-conditioned priors, else the LDM scripts'."""
    return stable_diffusion if getattr(prior, "text_conditioned", False) else other


class NullSpaceComponent(torch.autograd.Function):
    """``x -> (I - A^T A) x`` for a linear operator; the map is symmetric, so its
    vector-Jacobian product applies the same map (no double backprop through ``A``)."""

    @staticmethod
    def forward(ctx, x: Tensor, operator: Any) -> Tensor:
        ctx.operator = operator
        return x - operator.adjoint(operator(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad - ctx.operator.adjoint(ctx.operator(grad)), None


def psld_step(
    problem: Problem,
    latent: Problem,
    z: Tensor,
    levels: tuple[float, float, float],
    weights: tuple[float, float],
    eta: float = 0.0,
    residual_noise: bool = True,
    adjoint_y: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One step of LituRout/PSLD's sampler (``p_sample_ddim`` of ``ldm/models/diffusion/psld.py``)
    in VE form: ``levels = (sigma, sigma', sigma_net)``, ``weights = (omega, gamma)``.

    With ``eps`` the network's output at timestep ``sigma_net`` for the state ``z`` and
    ``z0 = z - sigma eps``:

    .. math::
        z' = \mathrm{DDIM}_\eta(z_0, \epsilon) - \sqrt{(1+\sigma^2)(1+\sigma'^2)}\,\nabla_{z}\big[
        \omega \lVert A G(z_0) + \sigma_y n - y \rVert
        + \gamma \lVert E(A^T y + (I - A^T A) G(z_0)) - z_0 \rVert \big]

    (norms per sample; ``n`` fresh noise when ``residual_noise``, the code's
    ``meas_pred = noiser(meas_pred)``; the gluing term needs ``adjoint_y = A^T y`` and is
    skipped when ``gamma = 0``).  The square-root factor is the code's VP update
    ``z_prev - gradients`` in VE form.  Returns ``z'`` and ``z0``.
    """
    sigma, sigma_next, sigma_net = levels
    omega, gamma = weights
    prior, operator = problem.prior, problem.operator
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        eps = network_epsilon(latent, z, sigma, sigma_net)
        z0 = z - sigma * eps
        x0 = prior.decode(z0)
        predicted = operator(x0)
        if residual_noise and problem.noise_sigma > 0:
            predicted = predicted + problem.noise_sigma * latent.randn(tuple(predicted.shape))
        loss = omega * (predicted - problem.y).flatten(1).norm(dim=1)
        if gamma:
            glued = adjoint_y + NullSpaceComponent.apply(x0, operator)
            loss = loss + gamma * (prior.encode(glued) - z0).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    with torch.no_grad():
        z0, eps = z0.detach(), eps.detach()
        z_next = ddim_step(z0, eps, sigma, sigma_next, eta, latent.randn)
        return z_next - ve_step_factor(sigma, sigma_next) * grad, z0


def psld_sampling(problem: Problem, omega: float, gamma: float, eta: float, residual_noise: bool) -> Tensor:
    """LituRout/PSLD's sampler on CompVis' DDIM grid (:func:`~invsolve.samplers.latent.ldm_ddim_levels`),
    :func:`psld_step` per step from the VP ``N(0, I)``; the last state (timestep 0, not the clean
    latent) is decoded from its VP scaling, as the code decodes ``samples_ddim``."""
    latent = latent_problem(problem)
    levels, net = ldm_ddim_levels(latent)
    adjoint_y = problem.operator.adjoint(problem.y) if gamma else None
    z = latent.randn() / vp_scale(levels[0])
    for i in latent.iterate(range(len(net)), problem.method):
        z, z0 = psld_step(problem, latent, z, (levels[i], levels[i + 1], net[i]), (omega, gamma), eta,
                          residual_noise, adjoint_y)
        latent.report(i, levels[i], z, z0)
    with torch.no_grad():
        return problem.prior.decode(z * vp_scale(levels[-1]))


@register
@dataclass
class PSLD(Method):
    r"""Posterior sampling with latent diffusion (Rout et al., "Solving Linear Inverse Problems
    Provably via Posterior Sampling with Latent Diffusion Models", NeurIPS 2023).

    Official code: LituRout/PSLD (``stable-diffusion/ldm/models/diffusion/psld.py``,
    ``stable-diffusion/scripts/inverse.py``: ``ddim_steps = 1000``, ``ddim_eta = 0``); the loop
    is :func:`psld_sampling`.  Latent DPS through the decoder plus the ``gamma`` "gluing" term,
    which pulls ``z0`` towards the encoder's range of an image that agrees with ``y`` on the range
    of ``A^T`` and with ``G(z0)`` on the null space.  That image is the projection onto
    ``{x : A x = y}`` only when ``A A^T = I`` (masks, super-resolution with orthonormal rows),
    where the paper's guarantee holds; elsewhere the term is a heuristic.  ``omega`` / ``gamma``
    default to the run scripts' values (:func:`table_for_model`); 1000 steps (all ``T``
    timesteps, the alphas read one timestep below the network's ``t``, as the code does), DDIM
    ``eta = 0``, start the VP ``N(0, I)``.

    Deviations from the official code:

    * Stable Diffusion's encoder returns the mean of its KL posterior (the code samples it,
      ``get_first_stage_encoding``);
    * the code's first step asks the network at ``t = 1000``, past the table; here at 999.
    """

    name = "psld"
    needs = ("vjp", "adjoint", "latent")
    default_steps = 1000
    cost = "1 network call, 1 decoder and 1 encoder pass, and 1 backprop through all three per step"
    summary = "posterior sampling with latent diffusion (DPS through the decoder plus the gluing term)"

    task_defaults = PSLD_SD_TASK_DEFAULTS

    omega: float = 1.0
    gamma: float = 0.1
    eta: float = 0.0
    residual_noise: bool = True

    @classmethod
    def defaults_table(cls, prior: Any = None) -> Mapping[str, Defaults]:
        return table_for_model(prior, PSLD_SD_TASK_DEFAULTS, PSLD_LDM_TASK_DEFAULTS)

    def resolved(self, problem: Problem) -> PSLD:
        if self.gamma < 0 or not 0 <= self.eta <= 1:
            raise ValueError(f"need gamma >= 0 and 0 <= eta <= 1, got {self.gamma}, {self.eta}")
        return self

    def run(self, problem: Problem) -> Tensor:
        return psld_sampling(problem, self.omega, self.gamma, self.eta, self.residual_noise)
