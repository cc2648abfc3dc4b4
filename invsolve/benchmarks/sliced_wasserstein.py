"""Sliced Wasserstein-1 distance between two samples."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(
    a: Tensor, b: Tensor, directions: int = 500, generator: torch.Generator | None = None
) -> float:
    r"""Monte Carlo sliced Wasserstein-1 distance between equal-size samples ``(N, d)``.

    :math:`SW_1(a, b) = E_{\theta \sim U(S^{d-1})} W_1(\theta^T a, \theta^T b)`
    (Rabin et al., 2011; Bonneel et al., 2015), estimated with ``directions``
    random unit vectors.  In one dimension :math:`W_1` between two empirical
    measures with ``N`` atoms each is the mean absolute difference of the sorted
    projections.  Computed in float64.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"need two samples of the same shape (N, d), got {tuple(a.shape)} and {tuple(b.shape)}; "
            "flatten each sample to a vector and draw as many from both"
        )
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    a, b = a.double().cpu(), b.double().cpu()
    theta = torch.randn(a.shape[1], directions, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = (a @ theta).sort(dim=0).values
    pb = (b @ theta).sort(dim=0).values
    return float((pa - pb).abs().mean())
