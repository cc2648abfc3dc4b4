"""D-Flow: differentiating through flows, optimising the source noise of the flow map."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.dopri5 import dopri5
from invsolve.samplers.flow_reversed import paper_velocity

D_FLOW_SCRIPT = "annegnx/PnP-Flow scripts/script_test.sh"


def _row(iterations: int, problem: str) -> Defaults:
    return Defaults({"lmbda": 0.001, "alpha": 0.1, "iterations": iterations},
                    f"{D_FLOW_SCRIPT} (method=d_flow, problem={problem})")


def flow_map(problem: Problem, z: Tensor, steps: int, start_time: float = 0.0) -> Tensor:
    """``T(z)``: ``steps`` midpoint steps of the flow ODE from paper time ``start_time`` to 1."""
    delta = (1.0 - start_time) / steps
    for i in range(steps):
        t = delta * i + start_time
        z = z + delta * paper_velocity(problem, z + delta / 2 * paper_velocity(problem, z, t), t + delta / 2)
    return z


@register
@dataclass
class DFlow(Method):
    r"""D-Flow (Ben-Hamu, Puny, Gat, Karrer, Singer & Lipman, "D-Flow: Differentiating through
    Flows for Controlled Generation", ICML 2024), as run in the PnP-Flow repository.

    Official code: github.com/annegnx/PnP-Flow, ``pnpflow/methods/d_flow.py``
    (``config/method_config/d_flow.yaml``, ``scripts/script_test.sh``).  ``T(z)`` is the
    flow map, ``steps`` midpoint steps from paper time ``t = 0`` (noise) to 1
    (:mod:`invsolve.samplers.flow_reversed`).  The source noise is optimised,

    .. math::
        \min_z \; \lVert A\, T(z) - y \rVert^2 + \lambda \Big(\tfrac12 \lVert z \rVert^2
        - (d - 1) \log \lVert z \rVert\Big),

    the second term the negative log-density of ``||z||`` under ``N(0, I_d)``, from the
    blended start ``z_0 = sqrt(alpha) T^{-1}(A^T y) + sqrt(1 - alpha) eps`` (the inverse
    map by adaptive Dormand-Prince, :func:`invsolve.samplers.dopri5.dopri5`, ``rtol = atol
    = 1e-5``), by ``iterations`` calls of L-BFGS (``torch.optim.LBFGS``: ``max_iter = 20``,
    ``history_size = 100``, strong Wolfe line search).  The restoration is ``T(z)``.

    As the official code runs it: ``steps_euler: 6`` (5 midpoint steps, ``steps``),
    ``start_time: 0``, ``LBFGS_iter: 20``; ``lmbda = 0.001``, ``alpha = 0.1`` and
    ``max_iter`` (``iterations``) per task from ``script_test.sh`` (:attr:`task_defaults`,
    the CelebA 128 px commands, the only ones published; box and free-form inpainting
    share 9); the yaml's ``lmbda: 0.01``, ``max_iter: 20`` for other tasks.  ``||z||^2`` is
    clamped at ``1e6`` and ``1e-5`` added to ``||z||`` in the log, as in the code.  The
    code never reads ``sigma_y``: the noise enters through ``lmbda``, tuned for the
    script's noise levels (0.05; 0.01 for random inpainting).  One callback per L-BFGS
    call, with ``T(z)``.

    Deviations:

    * the code optimises a batch with one L-BFGS on the summed loss, which couples its
      images through the line search and the curvature pairs; here each row has its own
      L-BFGS (the same for one image), and its own inversion;
    * ``torchdiffeq.odeint_adjoint`` is replaced by the same Dormand-Prince rules (no
      adjoint needed: the inversion takes no gradient).

    Cost: an inner problem, ``iterations x (up to 20 L-BFGS evaluations)``, each
    ``2 steps`` NFE forward and backward through the network, plus the inversion.
    """

    name = "d_flow"
    needs = ("adjoint", "vjp", "pixel")
    default_steps = 5
    summary = "D-Flow: L-BFGS on the source noise through the flow map, from a blended inversion of A^T y"
    cost = "an inner problem: iterations x up to 20 L-BFGS evaluations, each 2 x steps NFE and their backprop"
    task_defaults = MappingProxyType(
        {
            "denoising": _row(3, "denoising"),
            "gaussian_blur": _row(7, "gaussian_deblurring_FFT"),
            "super_resolution": _row(10, "superresolution"),
            "inpainting": _row(9, "inpainting"),
            "random_inpainting": _row(20, "random_inpainting"),
        }
    )

    lmbda: float = 0.01
    alpha: float = 0.1
    iterations: int = 20
    lbfgs_iterations: int = 20
    start_time: float = 0.0
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if int(self.iterations) < 1 or int(self.lbfgs_iterations) < 1:
            raise ValueError("iterations and lbfgs_iterations must be >= 1")

    def _invert(self, problem: Problem, x: Tensor) -> Tensor:
        with torch.no_grad():
            return dopri5(lambda t, z: paper_velocity(problem, z, t), x, 1.0, 0.0, self.rtol, self.atol)

    def _loss(self, problem: Problem, z: Tensor, y: Tensor) -> Tensor:
        fit = (problem.operator(flow_map(problem, z, problem.steps, self.start_time)) - y).pow(2).sum()
        norm = z.pow(2).sum().sqrt()
        reg = 0.5 * norm.pow(2).clamp(-1e6, 1e6) - (z.numel() - 1) * torch.log(norm + 1e-5)
        return fit + self.lmbda * reg

    def run(self, problem: Problem) -> Tensor:
        y = problem.y
        start = problem.operator.adjoint(y)
        noise = problem.randn()
        rows, optimisers = [], []
        for b in range(y.shape[0]):
            z = self._invert(problem, start[b : b + 1])
            z = (math.sqrt(self.alpha) * z + math.sqrt(1 - self.alpha) * noise[b : b + 1]).requires_grad_(True)
            rows.append(z)
            optimisers.append(torch.optim.LBFGS([z], max_iter=self.lbfgs_iterations, history_size=100,
                                                line_search_fn="strong_wolfe"))
        for it in problem.iterate(range(self.iterations), self.name):
            for b, (z, optimiser) in enumerate(zip(rows, optimisers)):

                def closure(z: Tensor = z, optimiser: torch.optim.LBFGS = optimiser, b: int = b) -> Tensor:
                    optimiser.zero_grad()
                    with torch.enable_grad():
                        loss = self._loss(problem, z, y[b : b + 1])
                        loss.backward()
                    return loss

                optimiser.step(closure)
            with torch.no_grad():
                x = flow_map(problem, torch.cat([z.detach() for z in rows]), problem.steps, self.start_time)
            problem.report(it, 0.0, x, x)
        return x
