"""Flower: destination estimation, a conjugate-gradient refinement, then re-noising."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.flow_path import clamped_time, sigma_of, velocity
from operators.conjugate_gradient import conjugate_gradient


def refine(problem: Problem, x_hat: Tensor, adjoint_y: Tensor, lam: float, iterations: int, tolerance: float) -> Tensor:
    r"""``argmin_x ||A x - y||^2 / sigma_y^2 + ||x - x_hat||^2 / lam`` by conjugate gradients from ``x_hat``
    (``adjoint_y = A^T y``).

    Solved as ``(A^T A + rho I) x = A^T y + rho x_hat`` with ``rho = sigma_y^2 / lam``: the
    official system times ``sigma_y^2``, whose CG iterates are the same, and which stays
    defined at ``sigma_y = 0`` (then CG from ``x_hat`` reaches the point of ``{A x = y}``
    nearest ``x_hat``).  Each iteration is one ``A^T A``, counted as one operator call.
    """
    op, rows = problem.operator, x_hat.shape[0]
    rho = problem.noise_sigma**2 / lam

    def normal(v: Tensor) -> Tensor:
        problem.fused_operator_calls += rows
        return op.normal(v) + rho * v

    return conjugate_gradient(normal, adjoint_y + rho * x_hat, iterations, tolerance, x0=x_hat)


@register
@dataclass
class Flower(Method):
    r"""Flower (Pourya, El Rawas & Unser, "Flower: A Flow-Matching Solver for Inverse
    Problems", ICLR 2026), the isotropic variant (``gamma = 0``, the repository's ``flower``).

    Official code: github.com/mehrsapo/Flower, ``pnpflow/methods/flower.py``
    (``FLOWER.solve_ip``, ``cg``) with ``config/method_config/flower.yaml`` and
    ``scripts/script_test_celeba_flower_1_ot.sh``.  Its time ``t`` runs from noise (0) to
    data (1); invsolve's flow time is ``s = 1 - t``.  On the grid ``t_k = k / N``,
    ``k = 0 .. N-1``, with ``v`` the network's velocity (``~ x1 - x0`` in its time):

    .. math::
        \hat x_1 = x + (1 - t_k)\, v(x, t_k), \qquad
        \lambda_k = \frac{(1 - t_k)^2}{t_k^2 + (1 - t_k)^2}, \\
        x^\star = \arg\min_x \frac{\lVert A x - y \rVert^2}{\sigma_y^2}
            + \frac{\lVert x - \hat x_1 \rVert^2}{\lambda_k}
            \quad\text{(50 CG iterations from } \hat x_1), \\
        x \leftarrow t_{k+1}\, x^\star + (1 - t_{k+1})\, z, \quad z \sim N(0, I),

    from ``x ~ N(0, I)``; the last step (``t_N = 1``) returns ``x^*``.  ``lambda_k`` is the
    variance of the clean image given ``x_t`` for a standard normal image: the refinement
    is the exact posterior mean of a Gaussian destination around ``hat x_1``.  Defaults:
    100 steps and one run per estimate (``flower.yaml`` ``steps: 100``; the CelebA
    scripts pass ``steps 100`` and ``num_samples 1`` for every task).

    Deviations:

    * the official ``num_samples`` averages that many independent runs into one estimate;
      here each run is a sample (``solve(num_samples=N)``), whose mean is that estimate;
    * the official CG stop test (``r_norm.sqrt().all() < eps``) compares a boolean and never
      fires, so it always runs 50 iterations; here a row stops once its relative residual is
      below ``cg_tolerance`` (the official ``eps``, 1e-5), which moves ``x^*`` by less than that;
    * the network is asked at ``s = 1 - t`` clamped to the prior's noise range (the VE contract
      has no level at ``t = 0``), while ``hat x_1`` keeps the step's own ``1 - t_k``;
    * ``sigma_y = 0`` (which the official code divides by) is the limit of the same system:
      CG solves it multiplied by ``sigma_y^2`` (:func:`refine`), so noiseless data is projected
      onto ``{A x = y}``;
    * the AFHQ-Cat scripts tune only the step count (500 for Gaussian deblurring and
      super-resolution, 200 for random inpainting, 100 otherwise): pass ``steps``.
    """

    name = "flower"
    needs = ("adjoint", "pixel")
    default_steps = 100
    summary = "Flower: flow destination, conjugate-gradient posterior refinement, re-noising"
    cost = (
        "1 NFE and an inner least-squares solve per step: up to cg_iterations (50) conjugate-gradient "
        "iterations, each one A^T A"
    )

    cg_iterations: int = 50
    cg_tolerance: float = 1e-5

    def resolved(self, problem: Problem) -> Flower:
        if self.cg_iterations < 1 or self.cg_tolerance < 0:
            raise ValueError(
                f"need cg_iterations >= 1 and cg_tolerance >= 0, got {self.cg_iterations}, {self.cg_tolerance}"
            )
        return self

    def run(self, problem: Problem) -> Tensor:
        steps = problem.steps
        with torch.no_grad():
            adjoint_y = problem.operator.adjoint(problem.y)
        x = problem.randn()
        for k in problem.iterate(range(steps), self.name):
            t, t_next = k / steps, (k + 1) / steps
            s = clamped_time(problem, 1.0 - t)
            with torch.no_grad():
                x_hat = x - (1.0 - t) * velocity(problem, x, s)
                lam = (1.0 - t) ** 2 / (t**2 + (1.0 - t) ** 2)
                x_star = refine(problem, x_hat, adjoint_y, lam, self.cg_iterations, self.cg_tolerance)
                x = x_star if k == steps - 1 else t_next * x_star + (1.0 - t_next) * problem.randn()
            problem.report(k, float(sigma_of(s)), x, x_hat)
        return x
