"""Plug-and-play ADMM / proximal gradient with a proximal-operator prior (an LPN) or a diffusion denoiser."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.diffpir import gradient_data_step
from invsolve.samplers.drp import count_network_calls
from priors.base import is_proximal_prior

PNP_SOLVERS = ("admm", "pgd")
PNP_INITS = ("adjoint", "pinv", "measurement", "zero")
#: Floor on the measurement noise (on [-1, 1]) when a diffusion denoiser's level is derived from it.
PNP_MIN_NOISE = 0.01


def normal_residual(operator: Any, x: Tensor, y: Tensor) -> Tensor:
    """``A^T (A x - y)``: the exact adjoint where the operator has one, else a vector-Jacobian product."""
    if "adjoint" in getattr(operator, "capabilities", ()):
        return operator.adjoint(operator(x) - y)
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        out = operator(inputs)
        (grad,) = torch.autograd.grad(out, inputs, grad_outputs=(out - y).detach())
    return grad.detach()


@register
@dataclass
class PnPADMM(Method):
    r"""Plug-and-play ADMM and proximal gradient descent with a learned proximal operator (Fang,
    Buchanan & Sulam, "What's in a Prior? Learned Proximal Networks for Inverse Problems",
    ICLR 2024).

    Official code: ZhenghanFang/learned-proximal-networks (``lpn/inverse_celeba.py``,
    ``exps/celeba/test.py``).  With ``f(x) = scale ||y - A x||^2`` (scico's ``SquaredL2Loss``) and
    ``g`` the prior's regulariser, ADMM in the official update order ``"132"`` (x, u, z), from
    ``x = z = x_init``, ``u = 0``:

    .. math::
        x &\leftarrow \arg\min_x \mathrm{scale}\,\lVert y - A x\rVert^2 + \tfrac{\rho}{2}\lVert z - u - x\rVert^2
            = \mathrm{prox}^A_{\rho / (2\,\mathrm{scale})}(z - u), \\
        u &\leftarrow u + x - z, \qquad z \leftarrow \mathrm{prox}_g(x + u),

    returning ``x``.  ``solver="pgd"`` runs the official ``main_celeba_pgd``:
    ``x \leftarrow \mathrm{clip}(\mathrm{prox}_g(x - \eta A^\top(A x - y)))``, ``eta = step_size``.
    The data step is ``operator.prox`` (closed form for masks, circular blurs and block-average
    SR, conjugate gradients for other linear operators), else a gradient step through ``A``
    (:func:`invsolve.samplers.diffpir.gradient_data_step`).  ``prox_g`` is a proximal prior's
    (``priors.LPNPrior``: ``nabla psi``, which ignores the ADMM weight, as the official LPN does)
    or a diffusion prior's denoiser at one level ``denoiser_sigma`` (classic PnP-ADMM,
    Venkatakrishnan et al. 2013).  Defaults (official CelebA deblurring): ``rho = 0.1``,
    ``scale = 0.5``, 20 iterations, start ``A^T y``; PGD ``eta = 2``.  All weights are ratios of
    quadratics, so they carry over from [0, 1] images to [-1, 1] unchanged.  ``init`` may also be
    ``"pinv"``, ``"measurement"`` or ``"zero"``.

    Deviations from the official code:

    * diffusion denoisers as ``prox_g`` (the official code runs learned proximal networks, DnCNN
      and BM3D); ``denoiser_sigma=None`` picks the level at which the z-step is the MAP denoiser
      when ``f`` is the Gaussian log-likelihood scaled by ``2 scale noise_sigma^2``:
      ``sqrt(2 scale / rho) * noise_sigma`` (noise floored at 0.01).
    """

    name = "pnp_admm"
    needs = ("proximal|pixel", "prox|vjp")
    default_steps = 20
    cost = (
        "1 prior prox (one network call) and 1 operator prox (closed form or CG) per iteration; PGD: 1 prox "
        "and 1 A^T A per iteration; no backprop"
    )
    summary = "PnP-ADMM / PGD with a proximal prior (an LPN) or a diffusion denoiser at a fixed sigma"

    solver: str = "admm"
    rho: float = 0.1
    scale: float = 0.5
    step_size: float = 2.0
    denoiser_sigma: float | None = None
    init: str = "adjoint"

    def resolved(self, problem: Problem) -> PnPADMM:
        if self.solver not in PNP_SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(PNP_SOLVERS)}, got {self.solver!r}")
        if self.init not in PNP_INITS:
            raise ValueError(f"init must be one of {', '.join(PNP_INITS)}, got {self.init!r}")
        for label, value in (("rho", self.rho), ("scale", self.scale), ("step_size", self.step_size)):
            if not value > 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        if is_proximal_prior(problem.prior):
            if self.denoiser_sigma is not None:
                raise ValueError("denoiser_sigma sets a diffusion prior's denoiser; a proximal prior's prox has its own strength")
            return self
        if self.denoiser_sigma is not None:
            return self
        noise = max(problem.noise_sigma, PNP_MIN_NOISE)
        return dataclasses.replace(self, denoiser_sigma=math.sqrt(2 * self.scale / self.rho) * noise)

    def prox(self, problem: Problem, v: Tensor) -> Tensor:
        """The prior's proximal step: the LPN, or the diffusion denoiser at ``denoiser_sigma``."""
        if is_proximal_prior(problem.prior):
            count_network_calls(problem, v.shape[0])
            return problem.prior.prox(v)
        return problem.denoise(v, self.denoiser_sigma)

    def start(self, problem: Problem) -> Tensor:
        operator, y = problem.operator, problem.y
        caps = getattr(operator, "capabilities", ())
        if self.init == "adjoint" and "adjoint" in caps:
            return operator.adjoint(y)
        if self.init == "pinv" and "pinv" in caps:
            return operator.pinv(y)
        if self.init in ("adjoint", "measurement") and tuple(y.shape) == tuple(problem.x_shape):
            return y.clone()
        if self.init != "zero":
            raise ValueError(f"init={self.init!r} needs an operator with it (or a same-shape measurement); try init='zero'")
        return torch.zeros(problem.x_shape, device=y.device, dtype=y.dtype)

    def data_step(self, problem: Problem, v: Tensor) -> Tensor:
        """``argmin scale ||y - A x||^2 + rho/2 ||x - v||^2``."""
        weight = self.rho / (2 * self.scale)
        if "prox" in getattr(problem.operator, "capabilities", ()):
            return problem.operator.prox(v, problem.y, weight)
        return gradient_data_step(problem.operator, v, problem.y, weight)

    def run(self, problem: Problem) -> Tensor:
        x = self.start(problem)
        low, high = getattr(problem.prior, "data_range", None) or (-1.0, 1.0)
        z, u = x.clone(), torch.zeros_like(x)
        with torch.no_grad():
            for i in problem.iterate(range(problem.steps), self.name):
                if self.solver == "pgd":
                    x = self.prox(problem, x - self.step_size * normal_residual(problem.operator, x, problem.y))
                    x = x.clamp(low, high)
                    problem.report(i, 0.0, x, x)
                    continue
                x = self.data_step(problem, z - u)
                u = u + x - z
                z = self.prox(problem, x + u)
                problem.report(i, 0.0, x, z)
        return x
