"""Manifold constrained gradients (MCG)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.dps import dps_step, resolve_learned_variance
from invsolve.samplers.updates import vp_start_std
from invsolve.schedules import respaced_timesteps


def noised_measurement(problem: Problem, sigma: float, sigma_next: float) -> Tensor:
    r"""The official projection target for the step ``sigma -> sigma'``, in VE units.

    MCG's ``p_sample_loop_progressive`` puts ``q_sample(y, t)`` into the measured part of
    ``x_{t-1}``: the measurement noised to the level of the *current* step ``t``,
    ``sqrt(abar_t) y + sqrt(1 - abar_t) n``, with ``n`` image noise seen through the mask.
    Divided by ``sqrt(abar_{t-1})`` to reach the VE state at ``sigma'`` and written with
    ``n = A z``:

    .. math::
        y' = \sqrt{(1 + \sigma'^2) / (1 + \sigma^2)}\; (y + \sigma A z).
    """
    scale = math.sqrt((1 + sigma_next**2) / (1 + sigma**2))
    return scale * (problem.y + sigma * problem.operator(problem.randn()))


@register
@dataclass
class MCG(Method):
    r"""Manifold constrained gradients (Chung, Sim, Ryu & Ye, "Improving Diffusion Models for Inverse
    Problems using Manifold Constraints", NeurIPS 2022).

    Official code: HJ-harry/MCG_diffusion (``guided_diffusion/gaussian_diffusion.py``,
    ``p_sample_loop_progressive`` with ``sample_method="MCG"``; ``run_inpainting.sh``,
    ``scripts/sample_inpainting.py``).  Per step ``sigma -> sigma'`` with ``x0 = D(x, sigma)``
    clamped: the DDPM ancestral step ``x'`` (as DPS, :func:`~invsolve.samplers.dps.dps_step`),
    the gradient of the residual norm (the manifold constraint), then the projection onto the
    noised measurement set:

    .. math::
        x'' = x' - \alpha \sqrt{(1+\sigma^2)(1+\sigma'^2)}\, \nabla_x \lVert W (y - A x_0) \rVert_2,
        \qquad x_{new} = x'' - A^+ (A x'' - y'),

    with ``y'`` the measurement noised to the *current* level ``sigma``
    (:func:`noised_measurement`, the official ``q_sample(cond, t)``).  For inpainting this is the
    official ``x'' (1 - m) + q_sample(y, t) m``.  The square-root factor converts the official
    VP step (``alpha = 1``, ``th.norm`` not squared) to VE; ``weighting`` is ``W`` (identity when
    ``None``, as in the official code).  Official runs: all 1000 timesteps (the EDM grid for
    priors without a table), ``x_T ~ N(0, I)`` in VP, ``clip_denoised=True``, learned-range
    variance.  The last step projects onto ``q_sample(y, 0)``, which leaves ``sigma_0`` (0.01 on
    the linear table) of noise on the measured part.  Nothing depends on ``noise_sigma``: with
    noise, the samples carry it in the range of ``A`` amplified by ``A^+``, so MCG is a method for
    noiseless measurements (as the official experiments).

    Deviations from the official code (inpainting only):

    * the general ``A^+`` projection and the weighting ``W``; the noise of ``y'`` is ``A z`` (the
      official masked image noise for inpainting), and the official masking of the gradient by
      ``1 - m`` is implied by the projection;
    * per-sample norms, as in DPS.
    """

    name = "mcg"
    needs = ("vjp", "pinv", "pixel")
    default_steps = 1000
    cost = "1 network call, 1 backprop through the network and the operator, and 1 A^+ projection per step"
    summary = "MCG: DPS step plus projection onto the noised measurement set (noiseless problems)"
    noiseless_only = (
        "its projection puts y, noise included, back into the range of A at every step (the official code "
        "and experiments are noiseless); for noisy data use dps (the same gradient step without the "
        "projection) or ddrm"
    )
    clips_denoised = True

    alpha: float = 1.0
    weighting: Callable[[Tensor], Tensor] | None = None
    learned_variance: bool | None = None

    def resolved(self, problem: Problem) -> MCG:
        return dataclasses.replace(self, learned_variance=resolve_learned_variance(self, problem))

    def run(self, problem: Problem) -> Tensor:
        op = problem.operator
        guided = problem
        if self.weighting is not None:
            weigh = self.weighting
            guided = dataclasses.replace(problem, y=weigh(problem.y), operator=lambda x: weigh(op(x)))
        sigmas = problem.timestep_sigmas(respaced_timesteps)
        x = vp_start_std(problem, sigmas[0]) * problem.randn()
        for i in problem.iterate(range(len(sigmas) - 1), self.name):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            x, x0 = dps_step(guided, x, sigma, sigma_next, self.alpha, 1.0, bool(self.learned_variance))
            with torch.no_grad():
                x = x - op.pinv(op(x) - noised_measurement(problem, sigma, sigma_next))
            problem.report(i, sigma, x, x0)
        return x
