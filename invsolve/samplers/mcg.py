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
    r"""Manifold constrained gradients (Chung, Sim, Ryu & Ye, "Improving Diffusion Models
    for Inverse Problems using Manifold Constraints", NeurIPS 2022).

    Official code: github.com/HJ-harry/MCG_diffusion (``guided_diffusion/gaussian_diffusion.py``,
    ``p_sample_loop_progressive`` with ``sample_method="MCG"``; ``run_inpainting.sh``,
    ``scripts/sample_inpainting.py``).  Per step ``sigma -> sigma'``, with ``x0 = D(x, sigma)``
    clamped: the DDPM ancestral step ``x'`` (as in DPS, :func:`~invsolve.samplers.dps.dps_step`,
    with the network's learned variance when the prior has one), minus the gradient of the
    residual norm (the manifold constraint), then the projection onto the noised
    measurement set:

    .. math::
        x'' = x' - \alpha \sqrt{(1+\sigma^2)(1+\sigma'^2)}\, \nabla_x \lVert W (y - A x_0) \rVert_2,
        \qquad x_{new} = x'' - A^+ (A x'' - y'),

    with ``y'`` of :func:`noised_measurement` (the measurement noised to the *current*
    level ``sigma``, as the official ``q_sample(cond, t)``).  For inpainting ``A^+ A`` is
    the mask and this is the official ``x'' (1 - m) + q_sample(y, t) m``; its masking of
    the gradient by ``1 - m`` is implied, the projection replacing the measured part.  The
    square-root factor converts the official VP step (``alpha = 1``: the gradient is
    subtracted unscaled, ``th.norm`` not squared) to VE.  ``weighting`` is ``W`` (a
    function on measurements; identity when ``None``, as in the official code).

    As the official code runs it: all 1000 DDPM timesteps (``--timestep_respacing 1000``;
    the EDM grid for priors without a table), ``x_T ~ N(0, I)`` in VP, ``clip_denoised=True``,
    the learned-range variance of its ``learn_sigma`` model.  The last step projects onto
    ``q_sample(y, 0)``, which leaves ``sigma_0`` (0.01 on the linear table) of noise on the
    measured part.

    Measurement noise: as in the official code, nothing depends on ``noise_sigma``; the
    projection puts ``y`` with its noise back into the range of ``A`` at every step (the
    official experiments are noiseless).  With ``noise_sigma > 0`` the samples carry the
    full measurement noise in the range of ``A``, amplified by ``A^+`` where ``A`` has small
    singular values (deblurring): MCG is a method for noiseless measurements.

    Differences from the official code, which implements inpainting only: the general
    ``A^+`` projection and ``W``; the noise of ``y'`` is ``A z`` (the same as the official
    masked image noise for inpainting); per-sample norms as in DPS.  Needs a VJP and
    ``A^+``; 1 NFE and one network backprop per step.
    """

    name = "mcg"
    needs = ("vjp", "pinv", "pixel")
    default_steps = 1000
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
