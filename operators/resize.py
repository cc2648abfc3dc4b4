"""Resampling weights of MATLAB's ``imresize`` (bicubic, antialiased) as dense matrices."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cubic(t: Tensor, a: float = -0.5) -> Tensor:
    r"""Keys' cubic convolution kernel (Keys 1981) with ``a = -0.5``, MATLAB's ``"bicubic"``.

    ``(a+2)|t|^3 - (a+3)|t|^2 + 1`` for ``|t| <= 1``,
    ``a|t|^3 - 5a|t|^2 + 8a|t| - 4a`` for ``1 < |t| <= 2``, 0 beyond.
    """
    t = t.abs()
    inner = (a + 2) * t**3 - (a + 3) * t**2 + 1
    outer = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, inner, torch.where(t <= 2, outer, torch.zeros_like(t)))


def bicubic_matrix(in_length: int, out_length: int, antialias: bool = True) -> Tensor:
    r"""The ``(out_length, in_length)`` float64 matrix of MATLAB ``imresize`` along one axis.

    With ``scale = out_length / in_length``, output sample ``i`` (1-based) sits at
    input coordinate ``u_i = i / scale + (1 - 1 / scale) / 2`` (pixel centres
    aligned).  When shrinking with ``antialias`` the kernel is stretched,
    ``h(t) = scale * cubic(scale * t)`` with support ``4 / scale``; otherwise
    ``h = cubic``.  Row ``i`` holds ``h(u_i - j)`` over the ``ceil(support) + 2``
    input indices ``j`` from ``floor(u_i - support / 2)``, normalised to sum 1;
    indices outside ``1..n`` are mirrored with the edge sample repeated
    (``..., 2, 1 | 1, 2, ..., n | n, n-1, ...``) and their weights added to the
    sample they land on.  Rows therefore sum to 1 and constants are preserved.
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"resampling needs positive lengths, got {in_length} -> {out_length}")
    scale = out_length / in_length
    shrink = antialias and scale < 1
    support = 4.0 / scale if shrink else 4.0
    position = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    first = torch.floor(position - support / 2)
    taps = torch.arange(math.ceil(support) + 2, dtype=torch.float64)
    index = first[:, None] + taps[None, :]
    distance = position[:, None] - index
    weights = scale * cubic(scale * distance) if shrink else cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    folded = (index.long() - 1) % (2 * in_length)
    source = torch.where(folded < in_length, folded, 2 * in_length - 1 - folded)
    rows = torch.arange(out_length)[:, None].expand_as(source)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    return matrix.index_put_((rows, source), weights, accumulate=True)
