"""RED-Diff: regularisation by denoising diffusion, a variational sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.updates import misfit_gradient

#: Denoiser weightings ``w(sigma)`` of the paper's code; ``sigma = 1/sqrt(SNR)`` in VE.
REDDIFF_WEIGHTINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda s: s,
    "sqrt": math.sqrt,
    "square": lambda s: s * s,
    "log": math.log1p,
    "trunc_linear": lambda s: min(s, 1.0),
    "const": lambda s: 1.0,
}
REDDIFF_INITS = ("auto", "tikhonov", "pinv", "adjoint", "zeros")
#: The operator method each start needs.
INIT_NEEDS = {"tikhonov": "prox", "pinv": "pinv", "adjoint": "adjoint"}


@register
@dataclass
class REDDiff(Method):
    r"""RED-Diff (Mardani, Song, Kautz, Vahdat, "A Variational Perspective on Solving
    Inverse Problems with Diffusion Models", ICLR 2024).

    A point estimate :math:`\mu` (the mean of a Dirac variational posterior) is
    optimised with Adam while the noise level descends the prior's EDM grid
    (``steps`` levels, one NFE each).  At level :math:`\sigma`, with fresh
    :math:`\epsilon \sim N(0, I)` and :math:`D` evaluated without gradient,

    .. math::
        \ell(\mu) = \lambda\, w(\sigma)\, \operatorname{mean}\bigl(\operatorname{sg}[\hat\epsilon - \epsilon]
        \odot \mu\bigr) + \frac{v}{2} \operatorname{mean}\bigl((y - A(\mu))^2\bigr),
        \qquad \hat\epsilon = \frac{\mu + \sigma\epsilon - D(\mu + \sigma\epsilon, \sigma)}{\sigma}.

    In VE form :math:`\sigma(\hat\epsilon - \epsilon) = \mu - D(\mu + \sigma\epsilon, \sigma)`,
    so with the paper's default weighting :math:`w = \sigma = 1/\sqrt{\mathrm{SNR}}`
    (``"linear"``) the prior gradient is the RED residual :math:`\lambda(\mu - D)`.
    Means are taken per row and the row losses summed, so every sample is an
    independent optimisation.  The gradient is formed directly,
    :math:`\nabla\ell = \lambda w(\sigma)(\hat\epsilon - \epsilon)/n + v J_A^T (A(\mu) - y)/m`
    (``n``, ``m`` = entries per row of :math:`\mu` and :math:`y`); only :math:`A` is
    differentiated, never the network.

    Initialisation ``init``: ``"pinv"`` (:math:`A^+ y`, the paper's), ``"tikhonov"``
    (:math:`\arg\min_x \|y - A x\|^2 + \sigma_y^2 \|x\|^2`, the operator's ``prox`` at
    ``x0 = 0``: the posterior mean under a standard normal prior), ``"adjoint"``
    (:math:`A^T y`), ``"zeros"``; ``"auto"`` takes the first the operator offers of
    ``tikhonov`` (noisy measurements only), ``pinv``, ``adjoint``.  With noise,
    :math:`A^+ y` amplifies it by the inverse of the smallest kept singular value: on a
    61x61 Gaussian blur with noise 0.05 it starts the optimisation near +-200, which
    100 Adam steps do not undo (the paper's code thresholds such spectra at 3e-2);
    the Tikhonov start amplifies noise at most ``1 / (2 sigma_y)`` times and equals
    :math:`A^+ y` where the singular values are large.

    **Noise scale.** ``noise_sigma`` does not enter the update: as in the paper's
    code the observation weight ``obs_weight`` (:math:`v`) stands in for
    :math:`1/\sigma_y^2`, so the method is MAP-like and its samples vary only
    through the optimisation noise.  Defaults (released code and README):
    ``lam = 0.25``, ``obs_weight = 1``, Adam ``lr = 0.1``, betas (0.9, 0.99),
    ``weighting = "linear"``, 1000 steps.
    """

    name = "reddiff"
    needs = ("vjp", "pixel")
    default_steps = 1000
    summary = "RED-Diff: Adam on a point estimate with denoiser (score-matching) regularisation"

    lam: float = 0.25
    obs_weight: float = 1.0
    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    weighting: str = "linear"
    init: str = "auto"

    def resolved(self, problem: Problem) -> "REDDiff":
        if self.weighting not in REDDIFF_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(REDDIFF_WEIGHTINGS)}, got {self.weighting!r}")
        if self.init not in REDDIFF_INITS:
            raise ValueError(f"init must be one of {REDDIFF_INITS}, got {self.init!r}")
        if self.lr <= 0 or self.lam < 0 or self.obs_weight < 0:
            raise ValueError("need lr > 0, lam >= 0 and obs_weight >= 0")
        return self

    def initial_estimate(self, problem: Problem) -> Tensor:
        """The Tikhonov solution, ``A^+ y``, ``A^T y`` or zeros, as ``init`` asks and the operator allows."""
        caps = getattr(problem.operator, "capabilities", frozenset())
        init = self.init
        if init == "auto":
            preferred = ("tikhonov", "pinv", "adjoint") if problem.noise_sigma > 0 else ("pinv", "adjoint")
            init = next((name for name in preferred if INIT_NEEDS[name] in caps), "zeros")
        if init != "zeros" and INIT_NEEDS[init] not in caps:
            raise ValueError(f"init={init!r} needs an operator with {INIT_NEEDS[init]}(); use init='zeros' or 'auto'")
        with torch.no_grad():
            if init == "tikhonov":
                zeros = torch.zeros(problem.x_shape, device=problem.y.device, dtype=problem.y.dtype)
                return problem.operator.prox(zeros, problem.y, problem.noise_sigma**2).reshape(problem.x_shape)
            if init == "pinv":
                return problem.operator.pinv(problem.y).reshape(problem.x_shape)
            if init == "adjoint":
                return problem.operator.adjoint(problem.y).reshape(problem.x_shape)
        return torch.zeros(problem.x_shape, device=problem.y.device, dtype=problem.y.dtype)

    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.sigmas()[:-1]
        weight = REDDIFF_WEIGHTINGS[self.weighting]
        mu = self.initial_estimate(problem).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([mu], lr=self.lr, betas=(self.beta1, self.beta2))
        n, m = mu[0].numel(), problem.y[0].numel()
        for i in problem.iterate(range(len(sigmas)), self.name):
            sigma = sigmas[i]
            with torch.no_grad():
                estimate = mu.detach()
                x0 = problem.denoise(estimate + sigma * problem.randn(), sigma)
                eps_gap = (estimate - x0) / sigma  # eps_hat - eps, without gradient
                prior_grad = (self.lam * weight(sigma) / n) * eps_gap
                data_grad = (self.obs_weight / m) * misfit_gradient(problem.operator, estimate, problem.y)
                mu.grad = prior_grad + data_grad
            optimizer.step()
            problem.report(i, sigma, mu.detach(), x0)
        return mu.detach()
