"""DiffPIR: denoising diffusion models for plug-and-play image restoration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register

_DIFFPIR = "yuanzhi-zhu/DiffPIR "

#: ``(lam, zeta)`` of the official scripts: the deblurring script runs ``lambda_ * 7`` and
#: ``zeta * 3`` from ``lambda_ = 1``, ``zeta = 0.1``; the SISR script sweeps ``lambda_ = 2 ... 12``
#: with ``zeta = 0.25`` (see :class:`DiffPIR` for the value kept).  The field defaults are the
#: deblurring values.
DIFFPIR_TASK_DEFAULTS = MappingProxyType(
    {
        "blur": Defaults({"lam": 7.0, "zeta": 0.3}, _DIFFPIR + "main_ddpir_deblur.py"),
        "super_resolution": Defaults(
            {"lam": 4.0, "zeta": 0.25}, _DIFFPIR + "main_ddpir_sisr.py (lambda_ swept 2 ... 12; 4 kept)"
        ),
        "inpainting": Defaults({"lam": 1.0, "zeta": 1.0}, _DIFFPIR + "main_ddpir_inpainting.py"),
    }
)
#: The scripts' floor on the measurement noise level, on their [0, 1] scale.
DIFFPIR_MIN_NOISE_01 = 1e-3


def quad_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """DiffPIR's ``skip_type = "quad"`` grid, descending: ``T - 1 - s`` for
    ``s = int(sqrt(linspace(0, T^2, steps)))`` with the last ``s`` lowered by one
    (``main_ddpir_deblur.py``), so it runs from ``T - 1`` to 0, dense at low noise.
    Python's negative indexing of the scripts' ``sigmas[seq[i]]`` is kept (``steps = 1``
    gives ``[0]``); repeated values stay, as there."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seq = [int(s) for s in np.sqrt(np.linspace(0, num_timesteps**2, steps))]
    seq[-1] -= 1
    return [(num_timesteps - 1 - s) % num_timesteps for s in seq]


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
    r"""DiffPIR (Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration",
    CVPR Workshops 2023).

    Official code: yuanzhi-zhu/DiffPIR (``main_ddpir_deblur.py``, ``main_ddpir_sisr.py``,
    ``main_ddpir_inpainting.py``).

    Half-quadratic splitting inside the reverse diffusion, on the "quad" timesteps of the
    prior's table (:func:`quad_timesteps`; the EDM grid for priors without one).  At each level
    but the last, with :math:`D` clamped to [-1, 1] (the scripts' ``clip_denoised=True``):

    .. math::
        x_0 &= D(x_t, \sigma_t), \\
        \hat x_0 &= \arg\min_x \lVert y - A x \rVert^2 + \rho_t \lVert x - x_0 \rVert^2,
        \qquad \rho_t = \lambda \sigma_n^2 / \sigma_t^2, \\
        \hat\epsilon &= (x_t - \hat x_0) / \sigma_t, \qquad
        x_{t-1} = \hat x_0 + \sigma_{t-1} \bigl(\sqrt{1-\zeta}\,\hat\epsilon + \sqrt{\zeta}\, z\bigr).

    The data step is ``operator.prox`` (the scripts' closed forms: FFT for circular blurs and
    blur-and-decimate SR, the mask formula for inpainting; here also the SVD or conjugate
    gradients).  :math:`\sigma_n = \max(\text{noise\_sigma}/2, 0.001)`: the scripts' noise is on
    [0, 1] (``noise_level_img = 12.75 / 255``), so ``lam`` keeps its published meaning.  Start
    (VE form of the scripts'): ``sqrt(1 + s_y^2) y + sqrt(sigma_T^2 - s_y^2) z`` when ``y`` has
    the image's shape (``s_y`` the table level nearest to ``noise_sigma``), the bicubic
    upsampling of ``y`` plus ``sigma_T z`` for a smaller image (SR), ``sigma_T z`` otherwise.
    ``lam`` / ``zeta`` per task from :attr:`task_defaults`; 100 steps (the deblurring and SR
    scripts; the inpainting script runs 20: pass ``steps=20``).

    Deviations from the official scripts:

    * the last level (timestep 0) skips the network call whose output the scripts discard
      (``steps - 1`` NFE); the callback reports it with ``denoised = x``;
    * an operator without a prox gets one gradient step with the exact line search of the
      linearised objective, :math:`\hat x_0 = x_0 - \frac{\lVert g\rVert^2}{\lVert J_A g\rVert^2
      + \rho_t \lVert g\rVert^2}\, g`, :math:`g = J_A^T (A(x_0) - y)`; the scripts' first-order
      option (``sub_1_analytic=False``, step :math:`1/\rho_t`) diverges once
      :math:`\rho_t < \lVert J_A\rVert^2` and none of them runs it by default;
    * super-resolution uses ``lam = 4``: ``main_ddpir_sisr.py`` sweeps ``lam = 2 ... 12`` and the
      paper keeps the best per dataset (its appendix B); the value is chosen on our tuning crops
      (docs notes).  Operators outside the table get the deblurring values;
    * the SR script's kernel (``kernels_bicubicx234.mat``) and circular boundaries are the
      operator's business; its integer timesteps found by nearest sigma are the table grid here.
    """

    name = "diffpir"
    needs = ("prox|vjp", "pixel")
    default_steps = 100
    cost = (
        "1 network call and 1 operator prox (closed form, SVD or CG) per level, none at the last level; no "
        "backprop through the network"
    )
    summary = "DiffPIR: half-quadratic splitting with a closed-form prox (or one gradient step) per level"
    clips_denoised = True

    task_defaults = DIFFPIR_TASK_DEFAULTS

    lam: float = 7.0
    zeta: float = 0.3

    def resolved(self, problem: Problem) -> DiffPIR:
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if not 0 <= self.zeta <= 1:
            raise ValueError(f"zeta must be in [0, 1], got {self.zeta}")
        return self

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

    def initial_state(self, problem: Problem, sigma_start: float) -> Tensor:
        """The scripts' start in VE form (see the class docstring)."""
        y, shape, z = problem.y, tuple(problem.x_shape), problem.randn()
        if tuple(y.shape) == shape:
            table = problem.sigma_table
            s_y = problem.noise_sigma
            if table is not None:
                s_y = float(table[int((table - problem.noise_sigma).abs().argmin())])
            s_y = min(s_y, sigma_start)
            return math.sqrt(1 + s_y**2) * y + math.sqrt(sigma_start**2 - s_y**2) * z
        if y.ndim == 4 and len(shape) == 4 and y.shape[:2] == shape[:2]:
            return F.interpolate(y, size=shape[-2:], mode="bicubic", align_corners=False) + sigma_start * z
        return sigma_start * z

    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.timestep_sigmas(quad_timesteps)
        last = len(sigmas) - 2  # the final 0 is no level; the last level returns x as it is
        with torch.no_grad():
            x = self.initial_state(problem, sigmas[0])
            for i in problem.iterate(range(last), self.name):
                sigma, sigma_next = sigmas[i], sigmas[i + 1]
                x0 = problem.denoise(x, sigma)
                x0_hat = self.data_step(problem, x0, self.rho(problem, sigma))
                eps = (x - x0_hat) / sigma
                z = problem.randn()
                x = x0_hat + sigma_next * (math.sqrt(1 - self.zeta) * eps + math.sqrt(self.zeta) * z)
                problem.report(i, sigma, x, x0)
            problem.report(last, sigmas[last], x, x)
        return x
