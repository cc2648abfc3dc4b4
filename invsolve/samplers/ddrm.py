"""Denoising diffusion restoration models (DDRM)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.updates import spectral_measurement, vp_start_std
from invsolve.schedules import strided_timesteps


@register
@dataclass
class DDRM(Method):
    r"""Denoising diffusion restoration models (Kawar, Elad, Ermon & Song, "Denoising
    Diffusion Restoration Models", NeurIPS 2022).

    Works in the spectral coordinates of ``H = U diag(s) V^T``: ``xbar = V^T x``,
    ``x0bar = V^T D(x, sigma)``, ``ybar_i = (U^T y)_i / s_i`` whose noise has standard
    deviation ``sigma_y / s_i``.  From ``sigma`` to ``sigma'`` each coordinate moves by
    one of three rules (``z ~ N(0, 1)``, ``epsbar = (xbar - x0bar) / sigma``):

    * null space (``s_i = 0``): ``x0bar + sqrt(1 - eta^2) sigma' epsbar + eta sigma' z``;
    * ``sigma' < sigma_y / s_i`` (the measurement is noisier than the level):
      ``x0bar + sqrt(1 - eta^2) sigma' (ybar - x0bar) / (sigma_y / s_i) + eta sigma' z``;
    * ``sigma' > sigma_y / s_i``: ``(1 - eta_b) x0bar + eta_b ybar + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z``.

    The comparisons are strict, as in the official code: a coordinate with
    ``sigma' = sigma_y / s_i`` exactly, and every coordinate of a noiseless problem at the
    last step (``sigma' = 0 = sigma_y``), takes the null-space rule.

    Official code: github.com/bahjat-kawar/ddrm (``functions/denoising.py``,
    ``efficient_generalized_steps``; ``runners/diffusion.py``; ``main.py`` and the README's
    commands).  As it runs: 20 steps on the strided DDPM timesteps ``range(0, T, T // 20)``
    (t = 950, 900, …, 0) of the prior's table (the EDM grid for priors without one), the
    last step to ``abar = 1`` (``sigma' = 0``) returning the spectral combination of
    ``x0`` and ``y``; ``eta = 0.85`` (``--eta``, which sets both ``etaA`` and ``etaC``) and
    ``eta_b = 1`` (``--etaB``); no clamping of ``x0`` (only of the saved image).  Start:
    ``x_T`` is ``(ybar + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) z) / sigma_T`` in VP where
    ``s_i sigma_T > sigma_y``, ``z`` elsewhere; in VE that is ``sqrt(1 + sigma_T^2) / sigma_T``
    times the VE form ``ybar + sqrt(...) z`` (``sigma_T z``), a factor ``1 + 5e-5`` at
    t = 950 on the linear table (1 for priors without a table).  Singular values below
    ``1e-6 max(s)`` count as null space (the operator's SVD decides any truncation).

    Noise scale: the official ``--sigma_0`` is on the [0, 1] scale and doubled for
    images in [-1, 1]; ``noise_sigma`` here already is on the [-1, 1] scale and enters
    as is.  Needs the operator's SVD; 1 NFE per step, no network backprop.
    """

    name = "ddrm"
    needs = ("svd", "pixel")
    default_steps = 20
    summary = "DDRM: per-singular-value denoising in the operator's spectral basis"

    eta: float = 0.85
    eta_b: float = 1.0

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        svd = problem.operator.svd(problem.x_shape)
        if svd is None:
            raise ValueError(f"{type(problem.operator).__name__} returned no SVD; ddrm needs one")
        s, ybar = spectral_measurement(svd, problem.y, problem.x_shape)
        observed = s > 0
        sigma_y = problem.noise_sigma / torch.where(observed, s, torch.ones_like(s))  # std of ybar
        sigmas = problem.timestep_sigmas(strided_timesteps)

        start = observed & (sigma_y < sigmas[0])
        z = problem.randn(tuple(s.shape))
        xbar = torch.where(start, ybar + (sigmas[0] ** 2 - sigma_y**2).clamp_min(0).sqrt() * z, sigmas[0] * z)
        xbar = vp_start_std(problem, sigmas[0]) / sigmas[0] * xbar
        x = svd.V(xbar)
        for i in problem.iterate(range(len(sigmas) - 1), self.name):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = problem.denoise(x, sigma)
            x0bar = svd.Vt(denoised)
            z = problem.randn(tuple(s.shape))
            xbar = self._step(xbar, x0bar, ybar, sigma_y, observed, sigma, sigma_next, z)
            x = svd.V(xbar)
            problem.report(i, sigma, x, denoised)
        return x

    def _step(
        self,
        xbar: Tensor,
        x0bar: Tensor,
        ybar: Tensor,
        sigma_y: Tensor,
        observed: Tensor,
        sigma: float,
        sigma_next: float,
        z: Tensor,
    ) -> Tensor:
        """One DDRM transition in spectral coordinates (the three rules of the docstring)."""
        keep = math.sqrt(1 - self.eta**2)
        null = x0bar + sigma_next * (keep * (xbar - x0bar) / sigma + self.eta * z)
        noisy = x0bar + sigma_next * (keep * (ybar - x0bar) / sigma_y.clamp_min(1e-30) + self.eta * z)
        spread = (sigma_next**2 - self.eta_b**2 * sigma_y**2).clamp_min(0).sqrt()
        clean = (1 - self.eta_b) * x0bar + self.eta_b * ybar + spread * z
        noisier_than_y = observed & (sigma_next < sigma_y)
        less_noisy_than_y = observed & (sigma_next > sigma_y)
        return torch.where(noisier_than_y, noisy, torch.where(less_noisy_than_y, clean, null))
