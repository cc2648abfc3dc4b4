"""Flow Priors (ICTM): iterative corrupted trajectory matching with a flow prior."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.flow_path import sigma_of
from invsolve.samplers.flow_reversed import network_time, paper_velocity

FLOW_PRIORS_SCRIPT = "annegnx/PnP-Flow scripts/script_test.sh"


def _row(eta: float, lmbda: float, problem: str) -> Defaults:
    return Defaults({"eta": eta, "lmbda": lmbda}, f"{FLOW_PRIORS_SCRIPT} (method=flow_priors, problem={problem})")


def divergence_estimate(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """Hutchinson's ``probe^T (dv/dx) probe`` per row, differentiable in ``x`` (``v`` computed from ``x``)."""
    (vjp,) = torch.autograd.grad(v, x, grad_outputs=probe, create_graph=True)
    return (vjp * probe).flatten(1).sum(1)


@register
@dataclass
class FlowPriors(Method):
    r"""Flow Priors / ICTM (Zhang, Yu, Liu, Li, Wang & Qiu, "Flow Priors for Linear Inverse
    Problems via Iterative Corrupted Trajectory Matching", NeurIPS 2024), as run in the
    PnP-Flow repository.

    Official code: github.com/annegnx/PnP-Flow, ``pnpflow/methods/flow_priors.py``
    (``config/method_config/flow_priors.yaml``, ``scripts/script_test.sh``).  In the paper's
    time (``t = 0`` noise; :mod:`invsolve.samplers.flow_reversed`), from ``x = x_0 ~ N(0, I)``
    on ``t_i = eps + i (1 - eps) / N`` (``eps = 1e-3``), ``dt = 1 / N``, each step runs ``K``
    Adam steps (a fresh ``Adam(lr = eta)`` per step) on the corrupted-trajectory objective

    .. math::
        \lambda \lVert A(x + dt\, v(x, t_i)) - y_{i+1} \rVert^2 + dt\, \varepsilon^T \partial_x v(x, t_i)\, \varepsilon
        \;[+\, \tfrac12 \lVert x \rVert^2 \text{ at } i = 0], \qquad
        y_{i+1} = (t_i + dt)\, y + (1 - t_i - dt)\, A x_0,

    with a Rademacher probe ``eps`` (Hutchinson's trace of the divergence), adding for
    ``i > 0`` the prior's ``-grad log p_t(x) = (x - t v) / (1 - t)`` to the gradient; then the
    flow step ``x <- x + dt v(x, t_i)``.  The restoration is the last ``x``.

    As the official code runs it: ``N = 100``, ``K = 1``, ``start_time: 0`` (a positive
    ``start_time`` replaces ``eps`` and sets ``dt = (1 - eps) / N``), ``eta`` and ``lmbda``
    per task from ``script_test.sh`` (:attr:`task_defaults`, the CelebA 128 px commands,
    the only ones published; box and free-form inpainting share a row); the yaml's
    ``lmbda: 1000``, ``eta: 0.01`` otherwise.  The code never reads ``sigma_y``: the noise
    enters through ``lmbda``, tuned for the script's noise levels (0.05; 0.2 denoising).

    Deviations:

    * the probe is the sign of a normal draw (Rademacher, as the code's ``rand < 0.5``);
    * ``eps^T J eps`` is taken as ``eps^T (J^T eps)``, one VJP instead of the code's JVP
      (the same number), reusing the forward pass of ``v(x, t_i)``;
    * the Laplace-noise data term of the code is not offered.

    Cost: an inner problem per step, ``K`` Adam steps each 1 NFE with a double backprop
    (the gradient of the trace), plus 1 NFE for the flow step.
    """

    name = "flow_priors"
    needs = ("vjp", "pixel")
    default_steps = 100
    summary = "Flow Priors (ICTM): Adam steps matching the corrupted trajectory, with a Hutchinson divergence term"
    cost = "an inner problem per step: K Adam steps of 1 NFE and a double backprop, plus 1 NFE"
    task_defaults = MappingProxyType(
        {
            "denoising": _row(0.01, 100.0, "denoising"),
            "gaussian_blur": _row(0.01, 1000.0, "gaussian_deblurring_FFT"),
            "super_resolution": _row(0.1, 10000.0, "superresolution"),
            "inpainting": _row(0.01, 10000.0, "inpainting"),
            "random_inpainting": _row(0.01, 10000.0, "random_inpainting"),
        }
    )

    lmbda: float = 1000.0
    eta: float = 0.01
    inner_steps: int = 1
    start_time: float = 0.0

    def __post_init__(self) -> None:
        if int(self.inner_steps) < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if not 0.0 <= self.start_time < 1.0:
            raise ValueError(f"start_time must be in [0, 1), got {self.start_time}")

    def _gradient(self, problem: Problem, x: Tensor, t: float, dt: float, target: Tensor, first: bool) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = paper_velocity(problem, x, t)
            fit = self.lmbda * (problem.operator(x + v * dt) - target).pow(2).flatten(1).sum(1)
            probe = torch.sign(problem.randn())
            loss = fit + divergence_estimate(v, x, probe) * dt
            if first:
                loss = loss + 0.5 * x.pow(2).flatten(1).sum(1)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        if not first:
            grad = grad + (x - t * v).detach() / (1.0 - t)
        return grad

    def run(self, problem: Problem) -> Tensor:
        n, y = problem.steps, problem.y
        eps, dt = (self.start_time, (1.0 - self.start_time) / n) if self.start_time > 0 else (1e-3, 1.0 / n)
        x = problem.randn()
        with torch.no_grad():
            start = problem.operator(x)
        for i in problem.iterate(range(n), self.name):
            t = i / n * (1.0 - eps) + eps
            target = (t + dt) * y + (1.0 - (t + dt)) * start
            x = x.detach().clone().requires_grad_(True)
            adam = torch.optim.Adam([x], lr=self.eta)
            for _ in range(self.inner_steps):
                x.grad = self._gradient(problem, x, t, dt, target, first=i == 0)
                adam.step()
            with torch.no_grad():
                x = x.detach()
                x = x + paper_velocity(problem, x, t) * dt
            problem.report(i, float(sigma_of(network_time(problem, t))), x, x)
        return x
