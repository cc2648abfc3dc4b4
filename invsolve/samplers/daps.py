"""DAPS: decoupled annealing posterior sampling."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.updates import misfit_gradient
from invsolve.schedules import karras_sigmas

#: The paper's likelihood width for noiseless problems (its fixed tau).
DAPS_DEFAULT_TAU = 0.01
#: Curvature of the paper's data term ``||A x - y||^2 / tau^2`` at its tau = 0.01 (``||A|| = 1``),
#: the scale its learning rates were tuned for.
DAPS_PAPER_CURVATURE = 2 / DAPS_DEFAULT_TAU**2
#: Paper learning rates by operator kind (Zhang et al. 2025, App.; 1e-4 otherwise).
DAPS_LRS = {"phase_retrieval": 5e-5}
DAPS_DEFAULT_LR = 1e-4
#: Power iterations for ``||A||^2`` of a linear operator.
POWER_ITERATIONS = 30


@register
@dataclass
class DAPS(Method):
    r"""DAPS (Zhang, Chu, Berner, Meng, Anandkumar, Song, "Improving Diffusion Inverse
    Problem Solving with Decoupled Noise Annealing", CVPR 2025).

    Anneals :math:`x_t` down a noise grid (EDM poly-7, ``steps`` levels from
    ``sigma_max`` to ``sigma_min``, clipped to the prior's range) and decouples
    consecutive levels through a clean sample :math:`x_{0|y}`:

    1. :math:`\hat x_0(x_t)`: ``ode_steps`` Euler steps of the probability-flow ODE
       :math:`dx/d\sigma = (x - D(x, \sigma))/\sigma` from :math:`\sigma_t` down a poly-7
       grid to ``ode_sigma_min``, the last step being :math:`D` itself;
    2. Langevin MCMC (``langevin_steps`` steps) from :math:`\hat x_0` on the decoupled posterior
       :math:`U(x) = \lVert A(x) - y \rVert^2/(2\tau^2) + \lVert x - \hat x_0 \rVert^2/(2\sigma_t^2)`:
       :math:`x \leftarrow x - \eta_t \nabla U(x) + \sqrt{2\eta_t}\, z`;
    3. :math:`x_{t-1} = x_{0|y} + \sigma_{t-1} z` (the last level returns :math:`x_{0|y}`).

    **Step size.** The paper's ``lr`` is an absolute step tuned for its likelihood,
    whose curvature is :math:`c_0 = 2/0.01^2` for image operators with
    :math:`\lVert A \rVert = 1`; it decays linearly over the levels with ratio
    :math:`r` = ``lr_min_ratio``.  Here ``lr`` keeps that meaning and is converted to
    the largest curvature of :math:`U`,

    .. math::
        \eta_t = \frac{\text{lr}\, c_0\, (1 + (t/T)(r - 1))}{\lVert A \rVert^2/\tau^2 + 1/\sigma_t^2},

    which is the paper's step (to 1 %) at its :math:`\tau`, :math:`\lVert A \rVert = 1` and
    :math:`\sigma_t \ge 0.1`, and the same fraction (at most 2, the stability limit) of
    the inverse curvature for any other :math:`\tau`, operator norm or data scale; an
    absolute 1e-4 barely moves the chain when :math:`\tau \sim 1` and diverges when
    :math:`\lVert A \rVert/\tau \gg 100`.  :math:`\lVert A \rVert` is ``operator_norm``, or by default
    measured by power iteration on :math:`A^T A` for linear operators and taken as 1
    (the paper's image operators) for nonlinear ones.  Only :math:`A` is
    differentiated, never the network.

    **Noise scale.** Measurements and ``noise_sigma`` are on [-1, 1] as in the paper.
    :math:`\tau` is the standard deviation of the Gaussian likelihood
    :math:`p(y | x_0) = N(A(x_0), \tau^2 I)`; ``tau=None`` uses ``noise_sigma`` (the
    Bayesian value), or the paper's 0.01 when the problem is noiseless.  The
    paper's code fixes :math:`\tau = 0.01` for :math:`\sigma_y = 0.05` and writes the data
    term as :math:`\lVert A x - y\rVert^2/\tau^2`, a likelihood 7x sharper than the noise.

    Defaults: 200 levels from 100 to 0.1, 5 ODE steps to 0.01, 100 Langevin
    steps, ``lr_min_ratio = 0.01``, lr = 1e-4, or 5e-5 for phase retrieval (chosen
    from ``operator.kind`` when left ``None``; the paper also uses 5e-5 for motion
    blur and box inpainting, which share their kind with Gaussian blur and random
    inpainting: pass ``lr=5e-5`` there).  Cost: ``ode_steps`` NFE and ``langevin_steps``
    operator gradients per level, ~1000 NFE in all.
    """

    name = "daps"
    needs = ("vjp", "pixel")
    default_steps = 200
    summary = "DAPS: annealed Langevin on the decoupled posterior p(x0 | x_t, y)"

    sigma_max: float = 100.0
    sigma_min: float = 0.1
    ode_steps: int = 5
    ode_sigma_min: float = 0.01
    langevin_steps: int = 100
    lr: float | None = None
    lr_min_ratio: float = 0.01
    tau: float | None = None
    operator_norm: float | None = None

    def resolved(self, problem: Problem) -> "DAPS":
        if not 0 < self.sigma_min <= self.sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.ode_steps < 1 or self.langevin_steps < 0:
            raise ValueError("need ode_steps >= 1 and langevin_steps >= 0")
        if (self.lr is not None and self.lr <= 0) or not 0 < self.lr_min_ratio <= 1:
            raise ValueError("need lr > 0 and 0 < lr_min_ratio <= 1")
        if self.operator_norm is not None and self.operator_norm < 0:
            raise ValueError(f"operator_norm must be >= 0, got {self.operator_norm}")
        if self.tau is not None and self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        kind = getattr(problem.operator, "kind", "generic")
        lr = DAPS_LRS.get(kind, DAPS_DEFAULT_LR) if self.lr is None else self.lr
        tau = self.tau or (problem.noise_sigma if problem.noise_sigma > 0 else DAPS_DEFAULT_TAU)
        return dataclasses.replace(self, lr=lr, tau=tau)

    def annealing_sigmas(self, problem: Problem) -> list[float]:
        """The poly-7 grid of levels, clipped to the prior's ``[sigma_min, sigma_max]``."""
        hi = min(self.sigma_max, problem.prior.sigma_max)
        lo = min(max(self.sigma_min, problem.prior.sigma_min), hi)
        return karras_sigmas(problem.steps, lo, hi, append_zero=False).tolist()

    def ode_denoise(self, problem: Problem, x: Tensor, sigma: float) -> Tensor:
        """``x0_hat``: Euler steps of the probability-flow ODE from ``sigma`` to 0."""
        lo = max(self.ode_sigma_min, problem.prior.sigma_min)
        if sigma <= lo or self.ode_steps == 1:
            return problem.denoise(x, sigma)
        grid = karras_sigmas(self.ode_steps, lo, sigma).tolist()
        for s, s_next in zip(grid[:-1], grid[1:]):
            x0 = problem.denoise(x, s)
            x = x0 if s_next == 0 else x + (s_next - s) * (x - x0) / s
        return x

    def langevin(self, problem: Problem, x0_hat: Tensor, sigma: float, step: float) -> Tensor:
        """Unadjusted Langevin on ``U`` from ``x0_hat``; gradients through ``A`` only."""
        x = x0_hat
        inv_tau2, inv_sigma2 = 1 / self.tau**2, 1 / sigma**2
        noise_scale = math.sqrt(2 * step)
        for _ in range(self.langevin_steps):
            grad = inv_tau2 * misfit_gradient(problem.operator, x, problem.y) + inv_sigma2 * (x - x0_hat)
            x = x - step * grad + noise_scale * problem.randn()
        return x

    def operator_norm_squared(self, problem: Problem) -> float:
        """``||A||^2``: ``operator_norm``, power iteration on ``A^T A`` (linear), else 1."""
        if self.operator_norm is not None:
            return self.operator_norm**2
        operator = problem.operator
        if "adjoint" not in getattr(operator, "capabilities", ()):
            return 1.0
        v = problem.randn()
        largest = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
        for _ in range(POWER_ITERATIONS):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *([1] * (v.ndim - 1)))
            w = operator.adjoint(operator(v))
            largest = (v * w).flatten(1).sum(1)
            v = w
        return float(largest.max())

    def step_size(self, sigma: float, progress: float, norm_squared: float) -> float:
        """Langevin step at level ``sigma``; ``progress`` = level index / number of levels."""
        ratio = self.lr * DAPS_PAPER_CURVATURE * (1 + progress * (self.lr_min_ratio - 1))
        return ratio / (norm_squared / self.tau**2 + 1 / sigma**2)

    def run(self, problem: Problem) -> Tensor:
        sigmas = self.annealing_sigmas(problem)
        levels = len(sigmas)
        with torch.no_grad():
            norm_squared = self.operator_norm_squared(problem)
            x = sigmas[0] * problem.randn()
            for i in problem.iterate(range(levels), self.name):
                sigma = sigmas[i]
                x0_hat = self.ode_denoise(problem, x, sigma)
                step = self.step_size(sigma, i / levels, norm_squared)
                x0_y = self.langevin(problem, x0_hat, sigma, step)
                x = x0_y + sigmas[i + 1] * problem.randn() if i + 1 < levels else x0_y
                problem.report(i, sigma, x, x0_hat)
        return x
