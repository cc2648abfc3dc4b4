"""DAPS: decoupled annealing posterior sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.updates import is_linear, misfit_gradient
from invsolve.schedules import karras_sigmas

_DAPS_CONFIGS = "zhangbingliang2019/DAPS configs/task/"


def _daps_row(lr: float, config: str, **options: object) -> Defaults:
    return Defaults({"lr": lr, **options}, _DAPS_CONFIGS + config + " (pixel)")


#: The ``pixel:`` Langevin settings of each task config of the official code.
DAPS_TASK_DEFAULTS = MappingProxyType(
    {
        "gaussian_blur": _daps_row(1e-4, "gaussian_blur.yaml"),
        "motion_blur": _daps_row(5e-5, "motion_blur.yaml"),
        "super_resolution": _daps_row(1e-4, "down_sampling.yaml"),
        "box_inpainting": _daps_row(5e-5, "inpainting.yaml"),
        "random_inpainting": _daps_row(1e-4, "inpainting_rand.yaml"),
        "phase_retrieval": _daps_row(5e-5, "phase_retrieval.yaml"),
        "hdr": _daps_row(2e-5, "hdr.yaml"),
        "nonlinear_blur": _daps_row(1e-5, "nonlinear_blur.yaml", langevin_steps=200),
    }
)


@register
@dataclass
class DAPS(Method):
    r"""DAPS, decoupled annealing posterior sampling (Zhang, Chu, Berner, Meng, Anandkumar & Song,
    "Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing", CVPR 2025).

    Official code: zhangbingliang2019/DAPS in pixel space (``sampler.py``, ``cores/mcmc.py``,
    ``cores/scheduler.py``, ``configs/sampler/edm_daps.yaml``, ``configs/task/*.yaml``).

    Levels: the first ``steps`` of the ``steps + 1`` points of the EDM poly-7 grid from
    ``sigma_max`` (100) to ``sigma_min`` (0.1) (the scheduler counts the start as a step).
    At level :math:`\sigma_i`:

    1. :math:`\hat x_0`: ``ode_steps`` Euler steps of :math:`dx/d\sigma = (x - D(x, \sigma))/\sigma`
       on the poly-7 grid from :math:`\sigma_i` to ``ode_sigma_min`` (0.01), no final denoising;
    2. ``langevin_steps`` Langevin steps from :math:`\hat x_0` on
       :math:`U(x) = \lVert A(x) - y \rVert^2/\tau^2 + \lVert x - \hat x_0 \rVert^2/(2\sigma_i^2)`
       (``operator.loss`` has no ½):
       :math:`x \leftarrow x - \eta_i \nabla U(x) + \sqrt{2\eta_i}\, z`,
       :math:`\eta_i = \text{lr}\,(1 + \frac{i}{\text{steps}+1}(r - 1))`, ``r = lr_min_ratio``;
    3. :math:`x = x_{0|y} + \sigma_{i+1} z` (after the last level, :math:`x_{0|y}`).

    :math:`\tau` = 0.01 whatever the measurement noise: ``noise_sigma`` does not enter the
    update.  ``lr`` and ``langevin_steps`` per task from :attr:`task_defaults` (the ``pixel:``
    block of each task config); ``lr_min_ratio`` 0.01, 200 levels, 5 ODE and 100 Langevin steps.

    Deviations from the official code:

    * the official ADM is queried through EDM's ``VPPrecond`` at the continuous VP time
      :math:`999\, t(\sigma)`; here the VP wrapper interpolates the timestep in
      :math:`\log\sigma` over the exact table, and levels outside the prior's range keep their
      sigma with the timestep clamped;
    * a NaN stops the solve with :class:`~invsolve.samplers.DivergenceError` (the official
      Langevin chain returns zeros);
    * for a linear operator ``A^T y`` is computed once per solve and each Langevin step applies
      ``A^T A`` in one pass (``operator.normal``): the same update to float rounding.
    """

    name = "daps"
    needs = ("vjp", "pixel")
    default_steps = 200
    summary = "DAPS: annealed Langevin on the decoupled posterior p(x0 | x_t, y)"
    task_defaults = DAPS_TASK_DEFAULTS
    cost = (
        "per level: ode_steps network calls (the x0 ODE) and langevin_steps operator gradients (A^T A in one "
        "pass for linear operators, a VJP through A otherwise); no backprop through the network"
    )

    sigma_max: float = 100.0
    sigma_min: float = 0.1
    ode_steps: int = 5
    ode_sigma_min: float = 0.01
    langevin_steps: int = 100
    lr: float = 1e-4
    lr_min_ratio: float = 0.01
    tau: float = 0.01

    def resolved(self, problem: Problem) -> DAPS:
        if not 0 < self.sigma_min <= self.sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.ode_steps < 1 or self.langevin_steps < 0:
            raise ValueError("need ode_steps >= 1 and langevin_steps >= 0")
        if self.lr <= 0 or not 0 < self.lr_min_ratio <= 1:
            raise ValueError("need lr > 0 and 0 < lr_min_ratio <= 1")
        if self.tau <= 0 or self.ode_sigma_min <= 0:
            raise ValueError(f"tau and ode_sigma_min must be > 0, got {self.tau}, {self.ode_sigma_min}")
        return self

    def annealing_sigmas(self, steps: int) -> list[float]:
        """The ``steps`` visited levels: the poly-7 grid of ``steps + 1`` points without its last."""
        return karras_sigmas(steps + 1, self.sigma_min, self.sigma_max, append_zero=False)[:steps].tolist()

    def ode_denoise(self, problem: Problem, x: Tensor, sigma: float) -> Tensor:
        """``x0_hat``: ``ode_steps`` Euler steps of the probability-flow ODE from ``sigma`` to ``ode_sigma_min``."""
        grid = karras_sigmas(self.ode_steps + 1, self.ode_sigma_min, sigma, append_zero=False).tolist()
        for s, s_next in zip(grid[:-1], grid[1:]):
            x = x + (s_next - s) * (x - problem.denoise(x, s)) / s
        return x

    def step_size(self, level: int, steps: int) -> float:
        """The Langevin step at level ``level`` of ``steps`` (``MCMCSampler.get_lr``, ratio ``level / (steps + 1)``)."""
        ratio = level / (steps + 1)
        return self.lr * (1 + ratio * (self.lr_min_ratio - 1))

    def langevin(
        self, problem: Problem, x0_hat: Tensor, sigma: float, step: float, adjoint_y: Tensor | None = None
    ) -> Tensor:
        """Langevin dynamics on ``U`` from ``x0_hat``; gradients through ``A`` only.

        ``x - step grad U + sqrt(2 step) z`` is computed as ``keep x + anchor - step
        data_weight J^T (A x - y) + sqrt(2 step) z`` with ``keep = 1 - step / sigma^2`` and
        ``anchor = (step / sigma^2) x0_hat`` fixed over the level; with ``adjoint_y`` (a
        linear operator) the misfit gradient is ``A^T A x - A^T y``
        (:func:`~invsolve.samplers.updates.misfit_gradient`), counted as one operator call.
        """
        x = x0_hat
        data_weight, prior_weight = 2 / self.tau**2, 1 / sigma**2  # grad ||A x - y||^2 = 2 J^T (A x - y)
        noise_scale = math.sqrt(2 * step)
        keep, anchor = 1 - step * prior_weight, (step * prior_weight) * x0_hat
        for _ in range(self.langevin_steps):
            misfit = misfit_gradient(problem.operator, x, problem.y, adjoint_y)
            if adjoint_y is not None:
                problem.fused_operator_calls += x.shape[0]
            x = torch.add(anchor, x, alpha=keep)
            x.add_(misfit, alpha=-step * data_weight).add_(problem.randn(), alpha=noise_scale)
        return x

    def run(self, problem: Problem) -> Tensor:
        levels = problem.steps
        sigmas = self.annealing_sigmas(levels)
        with torch.no_grad():
            adjoint_y = problem.operator.adjoint(problem.y) if is_linear(problem.operator) else None
            x = self.sigma_max * problem.randn()
            for i in problem.iterate(range(levels), self.name):
                sigma = sigmas[i]
                x0_hat = self.ode_denoise(problem, x, sigma)
                x0_y = self.langevin(problem, x0_hat, sigma, self.step_size(i, levels), adjoint_y)
                x = x0_y + sigmas[i + 1] * problem.randn() if i + 1 < levels else x0_y
                problem.report(i, sigma, x, x0_hat)
        return x
