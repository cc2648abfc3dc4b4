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
    r"""Denoising diffusion restoration models (Kawar, Elad, Ermon & Song, "Denoising Diffusion
    Restoration Models", NeurIPS 2022).

    Official code: bahjat-kawar/ddrm (``functions/denoising.py``, ``efficient_generalized_steps``;
    ``runners/diffusion.py``; ``main.py`` and the README's commands).

    In the spectral coordinates of ``H = U diag(s) V^T`` (``xbar = V^T x``,
    ``x0bar = V^T D(x, sigma)``, ``ybar_i = (U^T y)_i / s_i`` with noise ``sigma_y / s_i``,
    ``epsbar = (xbar - x0bar) / sigma``), each coordinate moves from ``sigma`` to ``sigma'`` by

    * null space (``s_i = 0``): ``x0bar + sqrt(1 - eta^2) sigma' epsbar + eta sigma' z``;
    * ``sigma' < sigma_y / s_i``: ``x0bar + sqrt(1 - eta^2) sigma' (ybar - x0bar) / (sigma_y / s_i) + eta sigma' z``;
    * ``sigma' > sigma_y / s_i``: ``(1 - eta_b) x0bar + eta_b ybar + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z``.

    The comparisons are strict, as in the official code: ``sigma' = sigma_y / s_i`` exactly, and
    every coordinate of a noiseless problem at the last step, take the null-space rule.
    Start: ``ybar + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) z`` where ``s_i sigma_T > sigma_y``,
    ``sigma_T z`` elsewhere, times ``sqrt(1 + sigma_T^2) / sigma_T`` (the official VP start in VE).

    Official runs: 20 steps on ``range(0, T, T // 20)`` (t = 950, …, 0; the EDM grid for priors
    without a table), the last step to ``sigma' = 0``; ``eta`` 0.85 (``--eta``, both ``etaA`` and
    ``etaC``), ``eta_b`` 1 (``--etaB``); ``x0`` not clamped.  Singular values below
    ``1e-6 max(s)`` count as null space (the operator's SVD decides any truncation).

    Deviations from the official code:

    * ``noise_sigma`` is on the [-1, 1] scale and enters as is (the official ``--sigma_0`` is on
      [0, 1] and doubled).
    """

    name = "ddrm"
    needs = ("svd", "pixel")
    default_steps = 20
    cost = "1 network call and 1 operator SVD apply (V^T, V) per step; no backprop"
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
