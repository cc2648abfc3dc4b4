"""Manifold constrained gradients (MCG)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.dps import dps_step


@register
@dataclass
class MCG(Method):
    r"""Manifold constrained gradients (Chung, Sim, Ryu & Ye, "Improving Diffusion Models
    for Inverse Problems using Manifold Constraints", NeurIPS 2022).

    Per step ``sigma -> sigma'``, with ``x0 = D(x, sigma)``: the unconditional ancestral
    step ``x'`` (VE DDIM, ``eta = 1``), a gradient step on the weighted residual norm
    (the manifold constraint), then the projection onto the noised measurement set:

    .. math::
        x'' = x' - \alpha \sqrt{(1+\sigma^2)(1+\sigma'^2)}\, \nabla_x \lVert W (y - A x_0) \rVert_2,
        \qquad x_{new} = x'' - A^+ (A x'' - y'), \quad y' = y + \sigma' A z .

    ``y'`` is what the measurement of ``x0 + sigma' z`` would be, so the range part
    of ``x_new`` has the marginal of level ``sigma'``; for inpainting (``A^+ A`` a mask)
    this is the paper's ``(1 - m) x'' + m y'``.  The square-root factor converts the
    paper's VP step ``alpha`` to VE as in DPS.  ``weighting`` is ``W`` (a function on
    measurements; identity when ``None``).

    Measurement noise: the projection puts ``y`` with its noise back into the range at
    every step, so MCG assumes ``sigma_y = 0``; with ``noise_sigma > 0`` its samples
    carry the full measurement noise in the range of ``A`` (the paper's noted failure
    mode) and are no longer posterior samples.  Grid: the prior's EDM grid (rho = 7).
    Defaults: 1000 steps, ``alpha = 1``.  Needs a VJP and ``A^+``; 1 NFE and one
    network backprop per step.
    """

    name = "mcg"
    needs = ("vjp", "pinv", "pixel")
    default_steps = 1000
    summary = "MCG: DPS step plus projection onto the noised measurement set (noiseless problems)"

    alpha: float = 1.0
    weighting: Callable[[Tensor], Tensor] | None = None

    def run(self, problem: Problem) -> Tensor:
        op = problem.operator
        guided = problem
        if self.weighting is not None:
            weigh = self.weighting
            guided = dataclasses.replace(problem, y=weigh(problem.y), operator=lambda x: weigh(op(x)))
        sigmas = problem.sigmas()
        x = sigmas[0] * problem.randn()
        for i in problem.iterate(range(len(sigmas) - 1), self.name):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            x, x0 = dps_step(guided, x, sigma, sigma_next, self.alpha)
            with torch.no_grad():
                target = problem.y
                if sigma_next > 0:
                    target = target + sigma_next * op(problem.randn())
                x = x - op.pinv(op(x) - target)
            problem.report(i, sigma, x, x0)
        return x
