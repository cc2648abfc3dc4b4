"""Diffusion posterior sampling (DPS)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.updates import ancestral_step, ddim_step, ve_step_factor, vp_start_std
from invsolve.schedules import respaced_timesteps

_DPS_CONFIGS = "DPS2022/diffusion-posterior-sampling configs/"


def _dps_row(step_size: float, config: str) -> Defaults:
    return Defaults({"step_size": step_size}, _DPS_CONFIGS + config)


#: ``conditioning.params.scale`` of each task config of the official code; the box and
#: random masks share ``inpainting_config.yaml``.
DPS_TASK_DEFAULTS = MappingProxyType(
    {
        "gaussian_blur": _dps_row(0.3, "gaussian_deblur_config.yaml"),
        "motion_blur": _dps_row(0.3, "motion_deblur_config.yaml"),
        "nonlinear_blur": _dps_row(0.3, "nonlinear_deblur_config.yaml"),
        "super_resolution": _dps_row(0.3, "super_resolution_config.yaml"),
        "inpainting": _dps_row(0.5, "inpainting_config.yaml"),
        "phase_retrieval": _dps_row(1.0, "phase_retrieval_config.yaml"),
    }
)


def resolve_learned_variance(method: Method, problem: Problem) -> bool:
    """``method.learned_variance`` decided: ``None`` follows the prior's ``learned_variance``."""
    available = bool(getattr(problem.prior, "learned_variance", False))
    if method.learned_variance and not available:
        raise ValueError(
            "learned_variance=True needs a prior whose network predicts its step variances (a prior with "
            "learned_variance, e.g. an ADM checkpoint); this prior has none, so leave the option None"
        )
    return available if method.learned_variance is None else bool(method.learned_variance)


def denoise_and_variance(
    problem: Problem, x: Tensor, sigma: float, sigma_next: float, learned: bool
) -> tuple[Tensor, Tensor | None]:
    """``D(x, sigma)`` and, when ``learned``, the prior's learned variance of the step to ``sigma_next``."""
    if not learned:
        return problem.denoise(x, sigma), None
    rows = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
    return problem.prior.denoise_with_variance(x, rows, torch.full_like(rows, sigma_next))


def residual_norm_grad(
    problem: Problem, x: Tensor, sigma: float, sigma_next: float | None = None, learned: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``D(x, sigma)``, ``grad_x sum_n ||y_n - A(D(x_n, sigma))||_2`` (per-sample norms) and the
    learned step variance to ``sigma_next`` (``None`` unless ``learned``)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        x0, variance = denoise_and_variance(problem, x, sigma, sigma_next or 0.0, learned)
        norms = (problem.y - problem.operator(x0)).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(norms.sum(), x)
    return x0.detach(), grad, None if variance is None else variance.detach()


def dps_step(
    problem: Problem,
    x: Tensor,
    sigma: float,
    sigma_next: float,
    step_size: float,
    eta: float = 1.0,
    learned_variance: bool = False,
) -> tuple[Tensor, Tensor]:
    """One DPS update ``sigma -> sigma_next``: the unconditional ancestral step from ``D(x, sigma)``
    minus the VE-converted gradient of the residual norm.  Returns the new ``x`` and ``D(x, sigma)``.

    The ancestral step is guided-diffusion's DDPM step with the network's learned variance
    when ``learned_variance`` (and ``eta = 1``), else the VE DDIM step with ``eta``
    (``eta = 1``: the DDPM step with the fixed-small variance)."""
    learned = learned_variance and eta == 1.0
    x0, grad, variance = residual_norm_grad(problem, x, sigma, sigma_next, learned)
    with torch.no_grad():
        if variance is not None:
            x_uncond = ancestral_step(x0, x, sigma, sigma_next, variance, problem.randn(tuple(x.shape)))
        else:
            x_uncond = ddim_step(x0, (x - x0) / sigma, sigma, sigma_next, eta, problem.randn)
        return x_uncond - step_size * ve_step_factor(sigma, sigma_next) * grad, x0


@register
@dataclass
class DPS(Method):
    r"""Diffusion posterior sampling (Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior Sampling
    for General Noisy Inverse Problems", ICLR 2023).

    Official code: DPS2022/diffusion-posterior-sampling (``guided_diffusion/gaussian_diffusion.py``,
    ``guided_diffusion/condition_methods.py``, ``configs/``).  With ``x0 = D(x_i, sigma_i)``, the
    unconditional ancestral step ``x'`` is corrected by the gradient of the residual *norm*:

    .. math::
        x_{i-1} = x' - \zeta \sqrt{(1+\sigma_i^2)(1+\sigma_{i-1}^2)}\,
        \nabla_{x_i} \lVert y - A(D(x_i, \sigma_i)) \rVert_2 .

    The square-root factor converts the official VP step ``zeta`` to VE, so ``step_size`` keeps
    the official values, per task from the task configs (:attr:`task_defaults`; 0.3 otherwise).
    Official runs (``configs/diffusion_config.yaml``): all 1000 timesteps of the prior's table
    (the EDM grid for priors without one), start ``x_T ~ N(0, I)`` in VP, ``x0`` clamped to the
    prior's ``data_range``, the DDPM ``p_sample`` step (mean ``x0 + (sigma'^2/sigma^2)(x - x0)``,
    the network's learned-range variance when the prior has one, else fixed-small); the last
    step adds no noise and returns ``x0`` minus the last gradient step.  ``noise_sigma`` does
    not enter the update.

    Deviations from the official code:

    * the residual norm is taken per sample, so batched samples are independent (the official
      norm spans the batch; the same at its batch size 1);
    * ``eta`` other than 1 swaps the DDPM step for a VE DDIM step (the official code has a DDIM
      sampler, unused by its configs).
    """

    name = "dps"
    needs = ("vjp", "pixel")
    default_steps = 1000
    cost = "1 network call and 1 backprop through the network and the operator per step"
    summary = "diffusion posterior sampling (gradient of the residual norm through the denoiser)"
    clips_denoised = True

    task_defaults = DPS_TASK_DEFAULTS

    step_size: float = 0.3
    eta: float = 1.0
    learned_variance: bool | None = None

    def resolved(self, problem: Problem) -> DPS:
        return dataclasses.replace(self, learned_variance=resolve_learned_variance(self, problem))

    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.timestep_sigmas(respaced_timesteps)
        x = vp_start_std(problem, sigmas[0]) * problem.randn()
        for i in problem.iterate(range(len(sigmas) - 1), self.name):
            x, x0 = dps_step(
                problem, x, sigmas[i], sigmas[i + 1], self.step_size, self.eta, bool(self.learned_variance)
            )
            problem.report(i, sigmas[i], x, x0)
        return x
