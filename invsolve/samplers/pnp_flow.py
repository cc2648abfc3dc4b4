"""PnP-Flow: plug-and-play image restoration with flow matching."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.flow_path import sigma_of
from invsolve.samplers.flow_reversed import network_time, paper_velocity

#: The per-task commands of the official test script (``dataset=celeba``, 128 px; the
#: repository publishes no other per-task rows).
PNP_FLOW_SCRIPT = "annegnx/PnP-Flow scripts/script_test.sh"


def _row(alpha: float, problem: str) -> Defaults:
    return Defaults({"alpha": alpha}, f"{PNP_FLOW_SCRIPT} (method=pnp_flow, problem={problem})")


@register
@dataclass
class PnPFlow(Method):
    r"""PnP-Flow (Martin, Gagneux, Delon & Mahmoudi, "PnP-Flow: Plug-and-Play Image Restoration
    with Flow Matching", ICLR 2025).

    Official code: github.com/annegnx/PnP-Flow, ``pnpflow/methods/pnp_flow.py``
    (``config/method_config/pnp_flow.yaml``, ``scripts/script_test.sh``).  In the paper's
    time (``t = 0`` noise, ``t = 1`` data; :mod:`invsolve.samplers.flow_reversed`), on the
    uniform grid ``t_k = k / N``, ``k = 0..N-1``, with the flow denoiser
    ``D_t(x) = x + (1 - t) v(x, t)``:

    .. math::
        z = x_k - \gamma (1 - t_k)^{\alpha} A^T (A x_k - y), \qquad
        x_{k+1} = \frac{1}{M} \sum_{j=1}^{M} D_{t_k}\!\big(t_k z + (1 - t_k) \varepsilon_j\big),
        \quad \varepsilon_j \sim N(0, I).

    As the official code runs it: ``N = 100`` (``steps_pnp``), ``gamma = 1`` (``lr_pnp``),
    the ``alpha_1_minus_t`` step schedule (``1_minus_t``, ``sqrt_1_minus_t`` and
    ``constant`` are ``alpha`` = 1, 0.5, 0), ``M = 5`` noise draws per step
    (``num_samples``, here ``averages``), ``alpha`` per task from ``script_test.sh``
    (:attr:`task_defaults`: the CelebA 128 px commands, the only ones published; box
    and free-form inpainting share 0.5); the restoration is the last average.  Nothing
    is clamped.

    Deviations:

    * the code multiplies the step by ``sigma_y^2`` and divides the Gaussian data
      gradient by ``sigma_y^2``; the two cancel, so the step is written without them
      (and runs on noiseless data, where the code divides 0 by 0);
    * the start ``A^T 1`` of the code is multiplied by ``t_0 = 0`` in the first
      interpolation, so the run starts from 0 instead (the same iterates);
    * the ``M`` draws of a step go through the network in one batch;
    * the Laplace-noise data term of the code is not offered.

    Cost per step: ``averages`` NFE (no network gradient) and one ``A``, ``A^T`` pair.
    """

    name = "pnp_flow"
    needs = ("adjoint", "pixel")
    default_steps = 100
    summary = "PnP-Flow: a gradient step on the data term, re-noising to time t, then the flow denoiser"
    cost = "averages (5) NFE per step, no network gradient"
    task_defaults = MappingProxyType(
        {
            "denoising": _row(0.8, "denoising"),
            "gaussian_blur": _row(0.01, "gaussian_deblurring_FFT"),
            "super_resolution": _row(0.3, "superresolution"),
            "inpainting": _row(0.5, "inpainting"),
            "random_inpainting": _row(0.01, "random_inpainting"),
        }
    )

    lr: float = 1.0
    alpha: float = 1.0
    averages: int = 5

    def __post_init__(self) -> None:
        if int(self.averages) < 1:
            raise ValueError(f"averages must be >= 1, got {self.averages}")

    def run(self, problem: Problem) -> Tensor:
        op, y, n = problem.operator, problem.y, problem.steps
        x = torch.zeros(problem.x_shape, device=y.device, dtype=y.dtype)
        with torch.no_grad():
            for k in problem.iterate(range(n), self.name):
                t = k / n
                z = x - self.lr * (1.0 - t) ** self.alpha * op.adjoint(op(x) - y)
                noisy = torch.cat([t * z + (1.0 - t) * problem.randn() for _ in range(self.averages)])
                denoised = noisy + (1.0 - t) * paper_velocity(problem, noisy, t)
                x = denoised.reshape(self.averages, *x.shape).mean(0)
                problem.report(k, float(sigma_of(network_time(problem, t))), x, x)
        return x
