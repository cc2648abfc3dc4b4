"""Transcriptions of official loops of the canon methods (RGM), for the parity tests.

Written from the official code statement by statement, on a dense matrix ``A`` and row-vector
samples ``(N, d)``; the generator ``G(x_j, j)`` stands for the network at level ``j``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def official_rgm_table(table_steps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[Tensor, Tensor]:
    """Jae-Moo/RGM ``forward.py`` ``NoiseSampler._coeff`` (``discrete_type = "original"``):
    ``(a_s_cum, sigmas_cum)``, with the betas cast to float32 as there."""
    t = torch.arange(0, table_steps + 1, dtype=torch.float64) / table_steps
    t = t * (1.0 - 1e-3) + 1e-3
    log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    alpha_bars = torch.exp(2.0 * log_mean_coeff)
    betas = 1 - alpha_bars[1:] / alpha_bars[:-1]
    betas = torch.cat((torch.tensor([1e-8], dtype=torch.float64), betas)).float()
    a_s_cum = torch.cumprod(torch.sqrt(1 - betas).double(), 0)
    return a_s_cum, torch.sqrt(1 - a_s_cum**2)


def official_rgm_drs(
    G: Callable[[Tensor, int], Tensor], A: Tensor, y: Tensor, alpha: float, lmbda: float, T: int, max_iter: int,
    noise_factor: float, generator: torch.Generator,
) -> Tensor:
    """Jae-Moo/RGM ``restore.py`` ``PnP_algorithm.DRS`` with ``H_functions.calculate_prox`` for
    ``A = U diag(s) V^T`` (``Ht_y = A^T y``; start ``H_pinv(y)``, the SR / denoising ``vec2img``).
    The noise of ``sampler.sample`` is drawn from ``generator``, one ``randn`` of ``x``'s shape a level."""
    a_s_cum, sigmas_cum = official_rgm_table()
    d = A.shape[1]
    _, s, vh = torch.linalg.svd(A, full_matrices=True)
    singulars = torch.zeros(d, dtype=A.dtype)
    singulars[: s.numel()] = s
    Vt, V = (lambda v: v @ vh.T), (lambda c: c @ vh)
    Ht_y = y @ A

    def calculate_prox(lm: float, x: Tensor, trans_y: Tensor) -> Tensor:
        temp = Vt(x) + Vt(lm * trans_y)
        return V(temp / (1 + lm * singulars**2))

    x = y @ torch.linalg.pinv(A).T
    for _ in range(max_iter):
        for j in reversed(range(1, T + 1)):
            noise = noise_factor * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x_t = float(a_s_cum[j]) * x + float(sigmas_cum[j]) * noise
            x_update = G(x_t, j)
            y_mix = (1 - alpha) * x + alpha * x_update
            z = calculate_prox(lmbda, 2 * y_mix - x, Ht_y)
            x = x + (z - y_mix)
    return x
