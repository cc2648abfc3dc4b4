"""OT-ODE: training-free linear inverse problems with flow models (ΠGDM guidance on the flow ODE)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.flow_path import sigma_of
from invsolve.samplers.flow_reversed import network_time, paper_velocity
from invsolve.samplers.pigdm import pigdm_direction

OT_ODE_SCRIPT = "annegnx/PnP-Flow scripts/script_test.sh"
GAMMAS = ("constant", "gamma_t")


def _row(start_time: float, gamma: str, problem: str) -> Defaults:
    return Defaults({"start_time": start_time, "gamma": gamma}, f"{OT_ODE_SCRIPT} (method=ot_ode, problem={problem})")


@register
@dataclass
class OTODE(Method):
    r"""OT-ODE (Pokle, Muckley, Chen & Karrer, "Training-free Linear Image Inverses via Flows",
    TMLR 2024), as reimplemented in the PnP-Flow repository.

    Official code: github.com/annegnx/PnP-Flow, ``pnpflow/methods/ot_ode.py``
    (``config/method_config/ot_ode.yaml``, ``scripts/script_test.sh``).  In the paper's time
    (``t = 0`` noise; :mod:`invsolve.samplers.flow_reversed`), Euler steps ``dt = 1 / N`` on
    the uniform grid ``t_k = k / N`` from ``k = int(N t_0)`` to ``N - 1``, starting from
    ``x = t_0 A^T y + (1 - t_0) eps``; with ``v = v(x, t)``, ``x1 = x + (1 - t) v`` and
    ``r_t^2 = (1 - t)^2 / ((1 - t)^2 + t^2)``:

    .. math::
        g = \Big(\frac{\partial x_1}{\partial x}\Big)^{T} A^T (r_t^2 A A^T + \sigma_y^2 I)^{-1} (y - A x_1),
        \qquad x \leftarrow x + dt \Big(v + \frac{1 - t}{t}\, \gamma_t\, g\Big),

    with ``gamma_t = 1`` (``constant``) or ``sqrt(t / (t^2 + (1 - t)^2))`` (``gamma_t``).
    ``(r_t^2 A A^T + sigma_y^2 I)^{-1}`` is ΠGDM's (:func:`invsolve.samplers.pigdm.pigdm_direction`:
    the SVD, else conjugate gradients; ``A^+`` when noiseless).  As the official code runs it:
    ``N = 100`` (``steps_ode``), ``start_time`` and ``gamma`` per task from
    ``script_test.sh`` (:attr:`task_defaults`: the CelebA 128 px commands, the only ones
    published; box and free-form inpainting share a row); no clamping.  ``steps`` is ``N``,
    so a run takes ``N - int(N t_0)`` steps, one callback each.

    Deviations:

    * the code's super-resolution branch computes ``r_t^2`` with ``t * k^2`` for ``t^2``
      (an operator-precedence slip); the paper's ``r_t^2`` is used for every task;
    * its per-task solvers (a diagonal for masks and SR, FFT for blur, GMRES otherwise)
      are one solve here, exact for any linear operator.

    Cost per step: 1 NFE and one backprop through the network, plus the linear solve.
    """

    name = "ot_ode"
    needs = ("adjoint", "pinv", "pixel")
    default_steps = 100
    summary = "OT-ODE: ΠGDM-style guidance (r_t^2 A A^T + sigma_y^2 I)^-1 on the flow ODE"
    cost = "1 NFE and one network backprop per step, plus the ΠGDM linear solve"
    task_defaults = MappingProxyType(
        {
            "denoising": _row(0.3, "gamma_t", "denoising"),
            "gaussian_blur": _row(0.4, "gamma_t", "gaussian_deblurring_FFT"),
            "super_resolution": _row(0.1, "constant", "superresolution"),
            "inpainting": _row(0.1, "gamma_t", "inpainting"),
            "random_inpainting": _row(0.1, "constant", "random_inpainting"),
        }
    )

    start_time: float = 0.2
    gamma: str = "constant"

    def __post_init__(self) -> None:
        if self.gamma not in GAMMAS:
            raise ValueError(f"gamma must be one of {', '.join(GAMMAS)}, got {self.gamma!r}")
        if not 0.0 < self.start_time < 1.0:
            raise ValueError(f"start_time must be in (0, 1), got {self.start_time}")

    def _weight(self, t: float) -> float:
        gamma = 1.0 if self.gamma == "constant" else math.sqrt(t / (t**2 + (1 - t) ** 2))
        return (1.0 - t) / t * gamma

    def run(self, problem: Problem) -> Tensor:
        op, y, n = problem.operator, problem.y, problem.steps
        first = int(n * self.start_time)
        if first < 1:
            raise ValueError(
                f"ot_ode starts at step int(steps * start_time) = {first}, time 0, where its guidance weight "
                f"(1 - t) / t is infinite; use steps >= {math.ceil(1 / self.start_time)} or a larger start_time"
            )
        with torch.no_grad():
            x = self.start_time * op.adjoint(y) + (1.0 - self.start_time) * problem.randn()
        for count, k in enumerate(problem.iterate(range(first, n), self.name)):
            t = k / n
            r2 = (1.0 - t) ** 2 / ((1.0 - t) ** 2 + t**2)
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                v = paper_velocity(problem, x_in, t)
                with torch.no_grad():
                    x1 = x_in + (1.0 - t) * v
                    vec = pigdm_direction(problem, y - op(x1), r2) / r2
                (jvec,) = torch.autograd.grad(v, x_in, grad_outputs=vec)
            with torch.no_grad():
                g = vec + (1.0 - t) * jvec
                x = x + (v.detach() + self._weight(t) * g) / n
            problem.report(count, float(sigma_of(network_time(problem, t))), x, x1)
        return x
