"""Small transcriptions of official update rules, in VP form as the official code writes them.

Each function follows one official sampling loop statement by statement on a DDPM
epsilon-model ``eps(x_vp, t)`` with table ``abar`` (``abar[-1]``, the clean end, is 1),
for a dense matrix ``A`` and row-vector samples ``(N, d)``.  They are written for the
parity tests, which run invsolve and these on the same exact Gaussian-mixture model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from priors import GaussianMixturePrior

EpsModel = Callable[[Tensor, int], Tensor]


def mixture_eps_model(prior: GaussianMixturePrior) -> EpsModel:
    """The exact mixture as a DDPM epsilon-network: ``eps = (x - D(x, sigma_t)) / sigma_t``
    with ``x = x_vp / sqrt(abar_t)`` (differentiable, so VJPs flow through it)."""

    def eps(x_vp: Tensor, t: int) -> Tensor:
        abar = float(prior.alphas_cumprod[t])
        sigma = math.sqrt((1 - abar) / abar)
        x = x_vp / math.sqrt(abar)
        return (x - prior.denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))) / sigma

    return eps


def _alpha(abar: Tensor, t: int) -> float:
    return 1.0 if t < 0 else float(abar[t])


def official_ddnm_plus(
    eps: EpsModel, abar: Tensor, A: Tensor, y: Tensor, sigma_y: float, eta: float, steps: int, n: int,
    generator: torch.Generator,
) -> Tensor:
    """wyhuai/DDNM ``functions/svd_ddnm.py`` ``ddnm_plus_diffusion`` (no time travel) with the
    ``Lambda`` / ``Lambda_noise`` rules of ``functions/svd_operators.py`` for ``A = U diag(s) V^T``.

    ``Lambda_noise`` is applied to ``V^T z`` and ``V^T eps`` (the inpainting class's reading;
    ``V^T z`` has the law of ``z``)."""
    d = A.shape[1]
    _, s, vh = torch.linalg.svd(A, full_matrices=True)
    singulars = torch.zeros(d, dtype=A.dtype)
    singulars[: s.numel()] = s
    inverse = torch.where(singulars > 0, 1 / singulars, torch.zeros_like(singulars))
    a_pinv = torch.linalg.pinv(A)
    Vt, V = (lambda v: v @ vh.T), (lambda c: c @ vh)
    skip = len(abar) // steps
    times = list(range(steps - 1, -1, -1)) + [-1]
    x = torch.randn(n, d, generator=generator, dtype=A.dtype)
    for i, j in zip(times[:-1], times[1:]):
        i, j = i * skip, (j * skip if j >= 0 else -1)
        at, at_next = _alpha(abar, i), _alpha(abar, j)
        et = eps(x, i)
        x0_t = (x - et * math.sqrt(1 - at)) / math.sqrt(at)
        sigma_t, a = math.sqrt(1 - at_next), math.sqrt(at_next)
        # Lambda
        lambda_t = torch.ones(d, dtype=A.dtype)
        change = sigma_t < a * sigma_y * inverse
        lambda_t = torch.where(change, singulars * sigma_t * math.sqrt(1 - eta**2) / a / sigma_y, lambda_t)
        x0_t_hat = x0_t - V(lambda_t * Vt((x0_t @ A.T - y) @ a_pinv.T))
        # Lambda_noise
        d1 = torch.full((d,), sigma_t * eta, dtype=A.dtype)
        d2 = torch.full((d,), sigma_t * math.sqrt(1 - eta**2), dtype=A.dtype)
        change = sigma_t < a * sigma_y * inverse
        d1, d2 = torch.where(change, sigma_t * eta, d1), torch.where(change, 0.0, d2)
        change = sigma_t > a * sigma_y * inverse
        spread = (sigma_t**2 - a**2 * sigma_y**2 * inverse**2).clamp_min(0).sqrt()
        d1, d2 = torch.where(change, spread, d1), torch.where(change, 0.0, d2)
        change = singulars == 0
        d1 = torch.where(change, sigma_t * eta, d1)
        d2 = torch.where(change, sigma_t * math.sqrt(1 - eta**2), d2)
        z = torch.randn(n, d, generator=generator, dtype=A.dtype)
        x = a * x0_t_hat + V(d1 * Vt(z)) + V(d2 * Vt(et))
    return x


def official_pigdm(
    eps: EpsModel, abar: Tensor, A: Tensor, y: Tensor, eta: float, weight: float, steps: int, n: int,
    generator: torch.Generator, sigma_y: float = 0.0,
) -> Tensor:
    """NVlabs/RED-diff ``algos/pgdm.py`` ``PGDM.sample`` with ``awd=True``, ``cond_awd=False``,
    ``mcg=False`` (``_configs/algo/pgdm.yaml``), its ``initialize``, and the grid of
    ``utils/functions.py`` ``get_timesteps`` (``start_step=1000``, ``end_step=0``).

    With ``sigma_y > 0`` the guidance's ``H^+`` becomes the paper's noisy form (Song et al.,
    ICLR 2023, Sec. 3.2), ``r_t^2 H^T (r_t^2 H H^T + sigma_y^2 I)^{-1}`` with the VP
    ``r_t^2 = 1 - abar_t`` (= ``sigma_t^2 / (1 + sigma_t^2)``); the start keeps ``H^+ y``."""
    T = len(abar)
    ts = list(range(0, T, T // steps))
    ss = [-1] + ts[:-1]
    a_pinv = torch.linalg.pinv(A)
    eye = torch.eye(A.shape[0], dtype=A.dtype)

    def guidance(v: Tensor, alpha_t: float) -> Tensor:
        if sigma_y == 0:
            return v @ a_pinv.T
        r2 = 1 - alpha_t
        return r2 * torch.linalg.solve(r2 * A @ A.T + sigma_y**2 * eye, v.T).T @ A

    a_T = _alpha(abar, ts[-1])
    x = math.sqrt(a_T) * (y @ a_pinv.T).expand(n, -1) + math.sqrt(1 - a_T) * torch.randn(
        n, A.shape[1], generator=generator, dtype=A.dtype
    )
    for ti, si in zip(reversed(ts), reversed(ss)):
        alpha_t, alpha_s = _alpha(abar, ti), _alpha(abar, si)
        c1 = math.sqrt((1 - alpha_t / alpha_s) * (1 - alpha_s) / (1 - alpha_t)) * eta
        c2 = math.sqrt(max((1 - alpha_s) - c1**2, 0.0))
        xt = x.detach().requires_grad_(True)
        et = eps(xt, ti)
        x0_pred = (xt - et * math.sqrt(1 - alpha_t)) / math.sqrt(alpha_t)
        mat = guidance(y - x0_pred @ A.T, alpha_t)
        mat_x = (mat.detach() * x0_pred).sum()
        (grad_term,) = torch.autograd.grad(mat_x, xt)
        coeff = math.sqrt(alpha_s) * math.sqrt(alpha_t) * weight
        z = torch.randn(x.shape, generator=generator, dtype=A.dtype)
        x = math.sqrt(alpha_s) * x0_pred.detach() + c1 * z + c2 * et.detach() + grad_term * coeff
    return x.detach()
