"""Pseudoinverse-guided diffusion models (ΠGDM)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.updates import ddim_step, spectral_measurement
from invsolve.schedules import strided_timesteps
from operators.conjugate_gradient import conjugate_gradient


def pigdm_direction(problem: Problem, residual: Tensor, r2: float) -> Tensor:
    r"""``v = r^2 A^T (r^2 A A^T + sigma_y^2 I)^{-1} residual`` in the unknown's space (the paper's noisy form).

    Noiseless this is ``A^+ residual``.  Noisy it uses the operator's SVD when it has
    one, ``V diag(r^2 s / (r^2 s^2 + sigma_y^2)) U^T`` (the spectral residual
    ``(U^T residual)_i / s_i`` shrunk by ``r^2 s_i^2 / (r^2 s_i^2 + sigma_y^2)``), and
    otherwise conjugate gradients on the positive definite ``r^2 A A^T + sigma_y^2 I``.
    """
    op, sigma_y = problem.operator, problem.noise_sigma
    if sigma_y == 0:
        return op.pinv(residual)
    svd = op.svd(problem.x_shape) if "svd" in op.capabilities else None
    if svd is None:
        u = conjugate_gradient(lambda w: r2 * op.forward(op.adjoint(w)) + sigma_y**2 * w, residual)
        return r2 * op.adjoint(u)
    s, rbar = spectral_measurement(svd, residual, problem.x_shape)
    return svd.V(r2 * s**2 / (r2 * s**2 + sigma_y**2) * rbar)


@register
@dataclass
class PiGDM(Method):
    r"""Pseudoinverse-guided diffusion models, ΠGDM (Song, Vahdat, Mardani & Kautz,
    "Pseudoinverse-Guided Diffusion Models for Inverse Problems", ICLR 2023).

    Official code: NVlabs/RED-diff (``algos/pgdm.py`` with ``awd=True``, ``cond_awd=False``,
    ``mcg=False`` from ``_configs/algo/pgdm.yaml``; grid ``utils/functions.py``, ``get_timesteps``;
    commands ``sample_test.sh``, ``sample_batch.sh``).  Per step ``sigma -> sigma'`` with
    ``D = D(x, sigma)``, one vector-Jacobian product through the denoiser:

    .. math::
        g = J_D(x)^T A^+ (y - A D), \qquad x' = \mathrm{DDIM}_\eta(x; D) + w\, g .

    The official VP update adds ``w sqrt(abar_{t-1}) sqrt(abar_t) g_vp`` to ``x_vp``; in VE
    (``g_vp = g / sqrt(abar_t)``, VP corrections ``1 / sqrt(abar_{t-1})`` larger) ``w`` enters
    unscaled.  The last step returns ``D + w g``.  Official runs: 100 steps
    (``exp.num_steps=100`` in the ΠGDM commands, over the yaml's 50) on
    ``range(0, 1000, 1000 // steps)`` from high to low (t = 990, …, 0; the EDM grid for priors
    without a table), ``eta = 1`` (every ΠGDM command; the yaml's default is 0), ``w = 1``, start
    ``A^+ y + sigma_T z`` (``x_T = sqrt(abar_T) A^+ y + sqrt(1 - abar_T) z`` in VP), no clamping.
    For inpainting (its ``in2`` degradations) the measured pixels of ``D`` are replaced by ``y``
    and ``g`` is masked to the missing ones, generalised as ``D <- D - A^+ (A D - y)``,
    ``g <- g - A^+ A g`` (``replace_observed``, on for inpainting in :attr:`task_defaults`); the
    DDIM direction keeps the network's ``eps``.

    Deviations from the official code:

    * noisy measurements follow the paper (its Sec. 3.2) where the code hard-codes
      ``sigma_y = 0``: ``noisy_guidance`` (``None``: on when ``noise_sigma > 0``, recorded in
      ``Result.options``) replaces ``A^+`` by ``r^2 A^T (r^2 A A^T + sigma_y^2 I)^{-1}``,
      ``r^2 = sigma^2 / (1 + sigma^2)`` (:func:`pigdm_direction`), the same at ``noise_sigma = 0``;
      ``noisy_guidance=False`` runs the code's ``A^+``, which amplifies the noise by
      ``1 / s_min``.  An operator with neither an SVD nor an adjoint keeps ``A^+``, with a warning;
    * ``noise_sigma`` is on the [-1, 1] scale.
    """

    name = "pigdm"
    needs = ("pinv", "vjp", "pixel")
    default_steps = 100
    cost = (
        "1 network call and 1 backprop through the network per step, plus 1 A^+ on the residual (with noisy "
        "guidance: the SVD, or CG through the adjoint)"
    )
    summary = "ΠGDM: pseudo-inverse guidance through one vector-Jacobian product of the denoiser"
    task_defaults = MappingProxyType(
        {
            "blur": Defaults({}, "NVlabs/RED-diff sample_test.sh (deg=deblur_gauss)"),
            "super_resolution": Defaults({}, "NVlabs/RED-diff sample_test.sh (deg=sr4)"),
            "inpainting": Defaults({"replace_observed": True}, "NVlabs/RED-diff algos/pgdm.py (in2 degradations)"),
        }
    )

    eta: float = 1.0
    weight: float = 1.0
    noisy_guidance: bool | None = None
    replace_observed: bool = False

    def resolved(self, problem: Problem) -> PiGDM:
        if self.noisy_guidance is not None:
            return self
        noisy = problem.noise_sigma > 0
        if noisy and not {"svd", "adjoint"} & problem.operator.capabilities:
            warnings.warn(
                "pigdm: the operator has neither an SVD nor an adjoint, so the noisy guidance of the paper "
                "cannot be formed; using the noiseless pseudo-inverse guidance, which amplifies the noise",
                UserWarning,
                stacklevel=4,
            )
            noisy = False
        return dataclasses.replace(self, noisy_guidance=noisy)

    def _direction(self, problem: Problem, residual: Tensor, sigma: float) -> Tensor:
        if self.noisy_guidance:
            return pigdm_direction(problem, residual, sigma**2 / (1 + sigma**2))
        return problem.operator.pinv(residual)

    def run(self, problem: Problem) -> Tensor:
        op = problem.operator
        sigmas = problem.timestep_sigmas(strided_timesteps)
        with torch.no_grad():
            x = op.pinv(problem.y) + sigmas[0] * problem.randn()
        for i in problem.iterate(range(len(sigmas) - 1), self.name):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                denoised = problem.denoise(x_in, sigma)
                with torch.no_grad():
                    v = self._direction(problem, problem.y - op(denoised), sigma)
                (g,) = torch.autograd.grad(denoised, x_in, grad_outputs=v)
            with torch.no_grad():
                denoised = denoised.detach()
                eps = (x - denoised) / sigma
                if self.replace_observed:
                    denoised = denoised - op.pinv(op(denoised) - problem.y)
                    g = g - op.pinv(op(g))
                x = ddim_step(denoised, eps, sigma, sigma_next, self.eta, problem.randn) + self.weight * g
            problem.report(i, sigma, x, denoised)
        return x
