"""DiffPIR: denoising diffusion models for plug-and-play image restoration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register

#: Paper values of zeta by operator kind (Zhu et al. 2023, section 4; 1.0 for inpainting).
DIFFPIR_ZETAS = {"inpainting": 1.0}
DIFFPIR_DEFAULT_ZETA = 0.1
#: The paper's floor on the measurement noise level, on its [0, 1] scale.
DIFFPIR_MIN_NOISE_01 = 1e-3


def gradient_data_step(operator: Any, x0: Tensor, y: Tensor, rho: float) -> Tensor:
    """One steepest-descent step on ``||y - A(x)||^2 + rho ||x - x0||^2`` from ``x0``, exact line search.

    ``g = J^T (A(x0) - y)``; along ``-g`` the linearised objective is minimised at
    ``alpha = ||g||^2 / (||J g||^2 + rho ||g||^2)``, per row.  ``J g`` comes from
    differentiating the vector-Jacobian product with respect to its cotangent.
    """
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        out = operator(x)
        cotangent = (out - y).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(out, x, grad_outputs=cotangent, create_graph=True)
        (jg,) = torch.autograd.grad(g, cotangent, grad_outputs=g.detach())
    g = g.detach()
    g2 = g.flatten(1).pow(2).sum(1)
    curvature = jg.detach().flatten(1).pow(2).sum(1) + rho * g2
    alpha = torch.where(curvature > 0, g2 / curvature.clamp_min(torch.finfo(g.dtype).tiny), 0)
    return x0 - alpha.reshape(-1, *([1] * (g.ndim - 1))) * g


@register
@dataclass
class DiffPIR(Method):
    r"""DiffPIR (Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image
    Restoration", CVPR Workshops 2023).

    Half-quadratic splitting inside the reverse diffusion.  At each level
    :math:`\sigma_t` (EDM grid of the prior, ``steps`` = NFE):

    .. math::
        x_0 &= D(x_t, \sigma_t), \\
        \hat x_0 &= \arg\min_x \lVert y - A x \rVert^2 + \rho_t \lVert x - x_0 \rVert^2,
        \qquad \rho_t = \lambda \sigma_n^2 / \sigma_t^2, \\
        \hat\epsilon &= (x_t - \hat x_0) / \sigma_t, \qquad
        x_{t-1} = \hat x_0 + \sigma_{t-1} \bigl(\sqrt{1-\zeta}\,\hat\epsilon + \sqrt{\zeta}\, z\bigr).

    The data step uses ``operator.prox`` where the operator offers one (closed form
    for masks, FFT for circular blurs and super-resolution, the SVD for matrices,
    conjugate gradients for other linear operators).  Otherwise it takes one
    gradient step through ``A`` from :math:`x_0` (the paper's eq. 13 for nonlinear
    operators), with the exact line search of the linearised objective in place of
    the paper's step :math:`1/\rho_t`, which overshoots once :math:`\rho_t < \lVert J_A\rVert^2`:
    :math:`g = J_A^T (A(x_0) - y)`,
    :math:`\hat x_0 = x_0 - \frac{\lVert g\rVert^2}{\lVert J_A g\rVert^2 + \rho_t \lVert g\rVert^2}\, g`
    (per sample; :math:`J_A g` by a second vector-Jacobian product).

    **Noise scale.** The paper's :math:`\sigma_n` is on the [0, 1] image scale
    (its "0.05" is 0.1 on [-1, 1]) and floored at 0.001; ``noise_sigma`` here is on
    [-1, 1], so :math:`\sigma_n = \max(\text{noise\_sigma}/2, 0.001)` and ``lam``
    keeps its published meaning.  In units where both terms share one scale,
    :math:`\rho_t = (\lambda/4)\,\text{noise\_sigma}^2/\sigma_t^2`; ``lam = 4`` is the
    Gaussian-conditioning value (:math:`p(x_0 | x_t) \approx N(D, \sigma_t^2 I)`).

    Defaults: 100 NFE, ``lam = 1``, ``zeta = 0.1`` (1.0 for inpainting, chosen
    from ``operator.kind`` when left ``None``).  One NFE per step, no network
    backpropagation.
    """

    name = "diffpir"
    needs = ("prox|vjp", "pixel")
    default_steps = 100
    summary = "DiffPIR: half-quadratic splitting with a closed-form prox (or one gradient step) per level"

    lam: float = 1.0
    zeta: float | None = None

    def resolved(self, problem: Problem) -> "DiffPIR":
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if self.zeta is not None:
            if not 0 <= self.zeta <= 1:
                raise ValueError(f"zeta must be in [0, 1], got {self.zeta}")
            return self
        kind = getattr(problem.operator, "kind", "generic")
        return dataclasses.replace(self, zeta=DIFFPIR_ZETAS.get(kind, DIFFPIR_DEFAULT_ZETA))

    def rho(self, problem: Problem, sigma: float) -> float:
        """The splitting weight ``lam * sigma_n^2 / sigma_t^2`` (``sigma_n`` on [0, 1])."""
        sigma_n = max(problem.noise_sigma / 2, DIFFPIR_MIN_NOISE_01)
        return self.lam * sigma_n**2 / sigma**2

    def data_step(self, problem: Problem, x0: Tensor, rho: float) -> Tensor:
        """``argmin ||y - A x||^2 + rho ||x - x0||^2``: exact prox, or one gradient step."""
        operator = problem.operator
        if "prox" in getattr(operator, "capabilities", ()):
            return operator.prox(x0, problem.y, rho)
        return gradient_data_step(operator, x0, problem.y, rho)

    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.sigmas()
        x = sigmas[0] * problem.randn()
        with torch.no_grad():
            for i in problem.iterate(range(len(sigmas) - 1), self.name):
                sigma, sigma_next = sigmas[i], sigmas[i + 1]
                x0 = problem.denoise(x, sigma)
                x0_hat = self.data_step(problem, x0, self.rho(problem, sigma))
                if sigma_next > 0:
                    eps = (x - x0_hat) / sigma
                    z = problem.randn()
                    x = x0_hat + sigma_next * (math.sqrt(1 - self.zeta) * eps + math.sqrt(self.zeta) * z)
                else:
                    x = x0_hat
                problem.report(i, sigma, x, x0)
        return x
