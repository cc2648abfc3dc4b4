"""RGM: restoration-based generative models, as a plug-and-play Douglas-Rachford solver."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register

_RGM = "Jae-Moo/RGM "

#: ``alpha``, ``lam`` and ``levels`` (``--alpha``, ``--lmbda``, ``--T``) of ``restore.sh``.
#: Its SR x4 / x8 runs take 40 iterations (the method's ``default_steps``), colourisation 20.
RGM_TASK_DEFAULTS = MappingProxyType(
    {
        "super_resolution": Defaults({"alpha": 0.05, "lam": 10.0, "levels": 1}, _RGM + "restore.sh (sr4, sr8)"),
        "colorization": Defaults(
            {"alpha": 0.5, "lam": 5.0, "levels": 2}, _RGM + "restore.sh (color; run it with steps=20)"
        ),
    }
)
#: The noise table of the RGM checkpoints: DDGAN's discretised VP SDE (``forward.py``
#: ``NoiseSampler``) with ``train.py``'s defaults, 4 levels, ``beta`` from 0.1 to 20.
RGM_TABLE_STEPS, RGM_BETA_MIN, RGM_BETA_MAX = 4, 0.1, 20.0


def rgm_levels(table_steps: int = RGM_TABLE_STEPS, beta_min: float = RGM_BETA_MIN,
               beta_max: float = RGM_BETA_MAX) -> tuple[Tensor, Tensor]:
    """``(a, s)``, length ``table_steps + 1``: the scale ``a_j`` and noise ``s_j`` of
    ``x_j = a_j x_0 + s_j eps`` on RGM's table (``forward.py``: ``_coeff`` of ``NoiseSampler``).

    ``t_j = j / N (1 - 10^-3) + 10^-3``, ``abar(t) = exp(-t^2 (beta_max - beta_min) / 2 - t beta_min)``,
    ``beta_0 = 10^-8``, ``beta_j = 1 - abar(t_j) / abar(t_{j-1})``, ``a_j = prod_{i <= j} sqrt(1 - beta_i)``,
    ``s_j = sqrt(1 - a_j^2)``; level ``j`` is the generator's input at its time index ``j - 1``.
    """
    t = torch.arange(table_steps + 1, dtype=torch.float64) / table_steps * (1 - 1e-3) + 1e-3
    abar = torch.exp(-0.5 * t**2 * (beta_max - beta_min) - t * beta_min)
    betas = torch.cat([torch.tensor([1e-8], dtype=torch.float64), 1 - abar[1:] / abar[:-1]])
    a = torch.cumprod(torch.sqrt(1 - betas), 0)
    return a, torch.sqrt(1 - a**2)


def rgm_prox(problem: Problem, v: Tensor, lam: float) -> Tensor:
    """``argmin_x lam ||A x - y||^2 / 2 + ||x - v||^2 / 2`` = the operator's ``prox(v, y, 1 / lam)``:
    closed form in the operator's SVD (or its mask / FFT / block form), conjugate gradients otherwise."""
    return problem.operator.prox(v, problem.y, 1.0 / lam)


@register
@dataclass
class RGM(Method):
    r"""Restoration-based generative models as a plug-and-play prior (Choi, Park and Kang,
    "Restoration based Generative Models", ICML 2023; official code ``Jae-Moo/RGM``,
    ``restore.py`` ``PnP_algorithm.DRS`` and ``restore.sh``).

    Douglas-Rachford splitting with the prior's restoration as one step, from ``x = A^+ y``;
    per iteration, for the levels ``j = levels, ..., 1`` of RGM's table (:func:`rgm_levels`):

    .. math::
        x_j &= a_j x + \mathrm{noise\_factor}\; s_j\, \varepsilon, \qquad
        v = (1 - \alpha)\, x + \alpha\, G_j(x_j), \\
        w &= \mathrm{prox}_{\lambda \lVert A \cdot - y\rVert^2 / 2}(2 v - x)
           = (I + \lambda A^\top A)^{-1} (2 v - x + \lambda A^\top y), \qquad x \leftarrow x + w - v,

    returning ``x``.  ``G_j`` is the RGM generator at level ``j``; with a diffusion prior it is
    its denoiser at that level, ``G_j(x_j) = D(x_j / a_j, s_j / a_j)`` (VE sigma 0.96 at
    ``j = 1``, 3.4 at ``j = 2``).  The prox is :func:`rgm_prox`.  ``steps`` counts iterations;
    one denoiser call per level.

    Defaults: ``restore.sh``, per task (:data:`RGM_TASK_DEFAULTS`: SR x4 / x8 ``alpha = 0.05``,
    ``lam = 10``, one level, 40 iterations), ``noise_factor = 0.99``.  ``lam`` weighs a data term
    on the [-1, 1] scale, as in the official code.  For tasks ``restore.sh`` does not run the
    fields hold ``alpha = 0.5`` (its colourisation value), ``lam = 10``, one level: on
    ``natural-64`` noisy Gaussian deblurring (``gauss61``, noise 0.05, one image) the SR row's
    ``alpha = 0.05`` gives 17.4 dB, ``alpha = 0.5`` 22.9 dB, the blurred input 21.8 dB (with 5 %
    of ``G`` per iteration the prox's noise amplification is barely regularised).

    Deviations:

    * The official ``restore.py`` builds its sampler from ``args.beta_min`` / ``args.beta_max``,
      which its parser does not define; the table here takes them from ``train.py``'s defaults
      (0.1, 20) with ``--num_timesteps 4`` of ``restore.sh``.
    * The generator's latent ``z`` has no counterpart in a denoiser; a checkpoint loader for
      RGM-KLD-D generators is not part of this method.
    * The official loop clamps ``v`` to [-1, 1] only with ``--clamp`` (off in ``restore.sh``);
      here ``clip_denoised`` clamps ``G_j`` instead, off by default.
    """

    name = "rgm"
    needs = ("pixel", "pinv", "prox")
    default_steps = 40
    summary = "PnP Douglas-Rachford with the prior's denoiser as the restoration step (RGM)"
    task_defaults = RGM_TASK_DEFAULTS
    cost = "one denoiser call and one operator prox per level"

    alpha: float = 0.5
    lam: float = 10.0
    levels: int = 1
    noise_factor: float = 0.99

    def resolved(self, problem: Problem) -> RGM:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not self.lam > 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if not 1 <= self.levels <= RGM_TABLE_STEPS:
            raise ValueError(f"levels must be in 1 ... {RGM_TABLE_STEPS}, got {self.levels}")
        if not self.noise_factor >= 0:
            raise ValueError(f"noise_factor must be >= 0, got {self.noise_factor}")
        return self

    def run(self, problem: Problem) -> Tensor:
        a, s = rgm_levels()
        levels = [(float(a[j]), float(s[j])) for j in range(self.levels, 0, -1)]
        with torch.no_grad():
            x = problem.operator.pinv(problem.y)
            for i in problem.iterate(range(problem.steps), self.name):
                for scale, noise in levels:
                    x_j = scale * x + self.noise_factor * noise * problem.randn()
                    restored = problem.denoise(x_j / scale, noise / scale)
                    v = (1 - self.alpha) * x + self.alpha * restored
                    x = x + rgm_prox(problem, 2 * v - x, self.lam) - v
                problem.report(i, noise / scale, x, restored)
        return x

