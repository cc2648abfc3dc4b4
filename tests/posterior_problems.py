"""Synthetic inverse problems whose posterior is known exactly, and a distance to check samples.

The Gaussian-mixture problem is the one of Cardoso et al., "Monte Carlo guided
diffusion for Bayesian linear inverse problems" (MCGdiff, ICLR 2024), section 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from operators import MatrixOperator
from priors import GaussianMixturePrior


def make_gmm_problem(
    d: int = 8, d_y: int = 4, seed: int = 0, noise_sigma: float | None = None
) -> tuple[GaussianMixturePrior, MatrixOperator, Tensor, float, GaussianMixturePrior]:
    """The MCGdiff mixture problem: ``(prior, operator, y, noise_sigma, posterior)``.

    * prior: 25 components with means ``(-8i, -8j, -8i, -8j, ...)`` in dimension ``d``
      (``i, j`` in ``{-2, ..., 2}``), unit covariances, weights ``∝ eps^2``, ``eps ~ N(0, 1)``;
    * operator: ``G ~ N(0, 1)^{d_y x d}``, ``G = U S V^T``, ``A = U diag(s) V[:d_y]`` with
      ``s`` sorted ``Uniform(0, 1)`` values (descending);
    * measurement: ``x* ~`` prior, ``noise_sigma = u * max(s)``, ``u ~ U(0, 1)``,
      ``y = A x* + noise_sigma * eps`` of shape ``(1, d_y)``;
    * posterior: the exact mixture ``prior.posterior(A, y, noise_sigma)``.

    Everything is float64 and drawn from one generator seeded with ``seed``.  A given
    ``noise_sigma`` replaces ``u * max(s)`` (for near-noiseless variants); the other
    draws stay the same.
    """
    if d_y > d:
        raise ValueError(f"d_y ({d_y}) must not exceed d ({d})")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    grid = torch.arange(-2, 3, dtype=f64)
    i, j = torch.meshgrid(grid, grid, indexing="ij")
    pair = torch.stack([-8 * i.reshape(-1), -8 * j.reshape(-1)], dim=1)  # (25, 2)
    means = pair.repeat(1, (d + 1) // 2)[:, :d]
    weights = torch.randn(25, generator=g, dtype=f64) ** 2
    prior = GaussianMixturePrior(weights, means, 1.0)

    G = torch.randn(d_y, d, generator=g, dtype=f64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=True)
    s = torch.rand(d_y, generator=g, dtype=f64).sort(descending=True).values
    A = U @ torch.diag(s) @ Vh[:d_y]
    operator = MatrixOperator(A)

    x_star = prior.sample(1, generator=g)
    u = torch.rand((), generator=g, dtype=f64)
    noise_sigma = float(u * s.max()) if noise_sigma is None else float(noise_sigma)
    y = x_star @ A.T + noise_sigma * torch.randn(1, d_y, generator=g, dtype=f64)
    posterior = prior.posterior(A, y, noise_sigma)
    return prior, operator, y, noise_sigma, posterior


def sliced_wasserstein(
    a: Tensor, b: Tensor, directions: int = 500, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-1 distance between two equal-size samples ``(N, d)``.

    ``SW_1(a, b) = E_theta W_1(theta^T a, theta^T b)`` over directions uniform on the
    sphere; in one dimension ``W_1`` between two empirical measures of equal size is
    the mean absolute difference of the sorted projections.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two samples of the same shape (N, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    theta = torch.randn(a.shape[1], directions, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = (a @ theta).sort(dim=0).values
    pb = (b @ theta).sort(dim=0).values
    return float((pa - pb).abs().mean())
