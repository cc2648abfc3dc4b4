"""Update rules shared by several samplers, in the VE convention ``x = x0 + sigma * eps``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float,
    noise: Callable[[tuple[int, ...]], Tensor] | None,
) -> Tensor:
    """VE DDIM step from ``sigma`` to ``sigma_next`` (Song et al., ICLR 2021).

    ``c = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)``,
    ``x' = x0 + sqrt(sigma'^2 - c^2) * eps + c * z``; ``eta = 1`` is the ancestral
    (DDPM-like) step, ``eta = 0`` the deterministic probability-flow step.
    ``noise(shape)`` draws ``z ~ N(0, I)`` (pass ``problem.randn``, so batched images
    keep their own generators); it is called only when the step adds noise (``c > 0``)
    and may be ``None`` for deterministic steps.
    """
    if sigma_next <= 0:
        return x0
    c = eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))
    x = x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * eps
    if c > 0:
        if noise is None:
            raise ValueError("a DDIM step with eta > 0 adds noise: pass noise=problem.randn")
        x = x + c * noise(tuple(x0.shape))
    return x


def vp_start_std(problem: Any, sigma: float) -> float:
    """Standard deviation, in VE units, of the official codes' start ``x_T ~ N(0, I)`` at level ``sigma``.

    DDPM-family codes draw a unit-variance VP state; with ``x = x_vp sqrt(1 + sigma^2)``
    that is ``sqrt(1 + sigma^2) z`` in VE for a prior with a timestep table (a DDPM
    model).  A VE prior without one starts at ``sigma z``, the EDM convention.
    """
    return math.sqrt(1 + sigma**2) if problem.sigma_table is not None else sigma


def ancestral_step(x0: Tensor, x: Tensor, sigma: float, sigma_next: float, variance: Tensor, noise: Tensor) -> Tensor:
    """DDPM step ``sigma -> sigma_next`` with a given per-entry VE ``variance`` (e.g. learned).

    The mean is the posterior mean of ``q(x_{sigma'} | x_sigma, x0)``,
    ``x0 + (sigma'^2 / sigma^2)(x - x0)`` (the VE form of Ho et al.'s ``mu~_t``, which
    guided-diffusion's ``p_sample`` uses with its clamped ``x0``); ``noise`` is ``N(0, I)``.
    """
    if sigma_next <= 0:
        return x0
    return x0 + (sigma_next**2 / sigma**2) * (x - x0) + variance.sqrt() * noise


def spectral_measurement(svd: Any, y: Tensor, x_shape: tuple[int, ...], rtol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(s, ybar)`` in the flat spectral coordinates ``V^T x`` of ``A = U diag(s) V^T``.

    Both have shape ``(rows, n)``: ``s`` holds the singular values padded with zeros over
    the null space, ``ybar_i = (U^T y)_i / s_i`` where ``s_i > 0`` and 0 elsewhere.  A
    problem's rows are ``num_samples`` copies of the measurement batch, so per-batch
    values ``(B, k)`` repeat ``rows // B`` times.  Values below ``rtol * max(s)`` (per
    batch item) count as null space.
    """
    rows = x_shape[0]
    n = svd.Vt(torch.zeros(x_shape, device=y.device, dtype=y.dtype)).shape[1]
    sv = svd.singular_values.to(device=y.device, dtype=y.dtype)
    sv = sv if sv.ndim == 2 else sv[None]
    if rows % sv.shape[0]:
        raise ValueError(f"singular values for a batch of {sv.shape[0]} do not fit {rows} rows")
    sv = sv.repeat(rows // sv.shape[0], 1)
    k = sv.shape[1]
    s = torch.zeros(rows, n, device=y.device, dtype=y.dtype)
    s[:, :k] = torch.where(sv > rtol * sv.amax(dim=1, keepdim=True), sv, torch.zeros_like(sv))
    ybar = torch.zeros_like(s)
    ybar[:, :k] = svd.Ut(y)[:, :k]
    ybar = torch.where(s > 0, ybar / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    return s, ybar


def spectral_misfit_gradient(svd: Any, y: Tensor, x_shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """``x -> A_s^T (A_s x - y)`` with ``A_s = U diag(s) V^T`` the operator's SVD.

    In spectral coordinates the gradient of ``||A_s x - y||^2 / 2`` is
    ``s^2 (V^T x - ybar)`` (:func:`spectral_measurement`), so one ``V^T`` and one ``V`` per
    call.  Where the SVD is exact, ``A_s = A``; where it is truncated (a separable reflect
    blur's ``factor_rcond``, DDRM's ``Deblurring`` class), this is the misfit of the
    truncated operator, as in the official code that runs through those SVD classes
    (NVlabs/RED-diff ``H.H``).
    """
    s, ybar = spectral_measurement(svd, y, x_shape)
    s2 = s * s
    return lambda x: svd.V(s2 * (svd.Vt(x) - ybar)).reshape(x_shape)


def is_linear(operator: Any) -> bool:
    """Whether ``operator`` declares an adjoint (a :class:`operators.LinearOperator`)."""
    return "adjoint" in getattr(operator, "capabilities", ())


def misfit_gradient(operator: Any, x: Tensor, y: Tensor, adjoint_y: Tensor | None = None) -> Tensor:
    """``J_A(x)^T (A(x) - y)``: the gradient of ``||A(x) - y||^2 / 2``, row by row.

    A linear operator's ``adjoint`` gives it exactly and cheaply; with ``adjoint_y``
    (``A^T y``, constant over a solve) it is ``A^T A x - A^T y`` through the operator's
    ``normal`` (one fused pass where the operator has one, e.g. two matrix products for a
    separable reflect blur), which does not go through ``operator(x)`` and so is not
    counted in ``forward_calls``.  Otherwise it is autograd's vector-Jacobian product
    through ``A`` (never through a network).
    """
    if is_linear(operator):
        if adjoint_y is not None:
            return operator.normal(x) - adjoint_y
        return operator.adjoint(operator(x) - y)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        misfit = 0.5 * (operator(x) - y).pow(2).sum()
        (grad,) = torch.autograd.grad(misfit, x)
    return grad


def ve_step_factor(sigma: float, sigma_next: float) -> float:
    """``sqrt((1 + sigma^2)(1 + sigma'^2))``: turns a constant VP step size into VE form.

    With ``x_vp = x / sqrt(1 + sigma^2)`` the VP gradient is ``g_vp = sqrt(1 + sigma^2) g``, and the
    VP correction ``x'_vp -= zeta g_vp`` at level ``sigma'`` is ``x' -= zeta sqrt((1 + sigma^2)(1 + sigma'^2)) g``
    in VE (``x' = sqrt(1 + sigma'^2) x'_vp``)."""
    return math.sqrt((1 + sigma**2) * (1 + sigma_next**2))
