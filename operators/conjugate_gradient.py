"""Batched conjugate gradients for symmetric positive (semi-)definite operators."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-item inner product, shaped to broadcast against ``a``."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int = 50,
    tolerance: float = 1e-6,
    x0: Tensor | None = None,
) -> Tensor:
    """Solve ``M x = b`` for every batch item, ``M`` symmetric positive semi-definite.

    Hestenes–Stiefel CG run on the whole batch at once; items whose relative
    residual ``||r|| / ||b||`` drops below ``tolerance`` stop moving.  Started from
    zero on a consistent semi-definite system it returns the minimum-norm solution.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    stop = (tolerance * _dot(b, b).sqrt()).square()
    for _ in range(iterations):
        active = rr > stop
        if not bool(active.any()):
            break
        mp = apply(p)
        pmp = _dot(p, mp)
        alpha = torch.where(active & (pmp > 0), rr / pmp.clamp_min(torch.finfo(b.dtype).tiny), 0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny), 0)
        p = r + beta * p
        rr = rr_new
    return x
