"""The Gaussian-mixture inverse problem of MCGdiff, whose posterior is known exactly.

Cardoso, Janati, Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian
linear inverse problems", ICLR 2024, section 4 (the "GMM" experiment).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from operators import MatrixOperator
from priors import GaussianMixturePrior

#: Spacing of the 5 x 5 grid of component means.
GRID_SPACING = 8.0


class GMMProblem(NamedTuple):
    """One draw of the problem; unpacks as ``prior, operator, y, noise_sigma, posterior``."""

    prior: GaussianMixturePrior
    operator: MatrixOperator
    y: Tensor
    noise_sigma: float
    posterior: GaussianMixturePrior


def grid_means(d: int) -> Tensor:
    """The 25 means ``(-8i, -8j, -8i, -8j, ...)`` in dimension ``d``, ``i, j`` in ``{-2..2}``."""
    steps = torch.arange(-2, 3, dtype=torch.float64)
    i, j = torch.meshgrid(steps, steps, indexing="ij")
    pair = torch.stack([-GRID_SPACING * i.reshape(-1), -GRID_SPACING * j.reshape(-1)], dim=1)
    return pair.repeat(1, (d + 1) // 2)[:, :d]


def start_sigma(d: int) -> float:
    """``max(80, 2 max_k |mu_k|)``: a largest noise level at which ``N(0, sigma^2 I)`` is the
    noised mixture to within ``exp(-1/8)`` in density at the farthest mean (80.0 at d <= 6,
    90.5 at d = 8, 286 at d = 80)."""
    return max(80.0, 2 * float(grid_means(d).norm(dim=1).max()))


def make_gmm_problem(
    d: int = 8, d_y: int = 4, seed: int = 0, noise_sigma: float | None = None, sigma_max: float = 80.0
) -> GMMProblem:
    r"""Draw the MCGdiff mixture problem in dimension ``d`` with ``d_y`` measurements.

    * prior: :math:`p(x) = \sum_{k=1}^{25} w_k N(x; \mu_k, I_d)`, means on the 5 x 5 grid
      of :func:`grid_means`, weights :math:`w_k \propto \epsilon_k^2`, :math:`\epsilon_k \sim N(0, 1)`;
    * operator: :math:`G \sim N(0, 1)^{d_y \times d}`, :math:`G = U S V^T`; the singular values
      are replaced by sorted (descending) :math:`s_i \sim U(0, 1)`:
      :math:`A = U \operatorname{diag}(s) V^T_{[:d_y]}`;
    * measurement: :math:`x^* \sim p`, :math:`\sigma_y = u \max_i s_i` with :math:`u \sim U(0, 1)`,
      :math:`y = A x^* + \sigma_y \epsilon`, shape ``(1, d_y)``;
    * posterior: a mixture with shared covariance :math:`(I + A^T A / \sigma_y^2)^{-1}`,
      from :meth:`priors.GaussianMixturePrior.posterior`.

    Everything is float64 and drawn, in that order, from one generator seeded with ``seed``.
    A given ``noise_sigma`` replaces :math:`u \max_i s_i` (near-noiseless variants) and
    leaves every other draw unchanged.  ``sigma_max`` is the prior's largest noise level, where
    samplers start from ``N(0, sigma_max^2 I)``: the means reach ``|mu| = 16 sqrt(d)``
    (143 at d = 80), and a start below that scale is not the noised prior (at d = 80 the
    exact-denoiser DDPM chain from 80 misses the prior by 4.6x the noise floor; from 250 it
    is at the floor); the posterior benchmark uses :func:`start_sigma`.
    """
    if d < 1 or d_y < 1:
        raise ValueError(f"need d >= 1 and d_y >= 1, got d={d}, d_y={d_y}")
    if d_y > d:
        raise ValueError(f"d_y ({d_y}) must not exceed d ({d})")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    weights = torch.randn(25, generator=g, dtype=f64) ** 2
    prior = GaussianMixturePrior(weights, grid_means(d), 1.0, sigma_max=sigma_max)

    G = torch.randn(d_y, d, generator=g, dtype=f64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=True)
    s = torch.rand(d_y, generator=g, dtype=f64).sort(descending=True).values
    A = U @ torch.diag(s) @ Vh[:d_y]

    x_star = prior.sample(1, generator=g)
    u = torch.rand((), generator=g, dtype=f64)
    noise_sigma = float(u * s.max()) if noise_sigma is None else float(noise_sigma)
    if noise_sigma <= 0:
        raise ValueError(f"noise_sigma must be > 0 for the posterior to exist, got {noise_sigma}")
    y = x_star @ A.T + noise_sigma * torch.randn(1, d_y, generator=g, dtype=f64)
    return GMMProblem(prior, MatrixOperator(A), y, noise_sigma, prior.posterior(A, y, noise_sigma))
