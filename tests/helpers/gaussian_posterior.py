"""The 4-d Gaussian problem with a closed-form posterior, and the per-method bounds the
SVD-method tests and the flow-prior tests check on it."""

from __future__ import annotations

import torch

from operators import MatrixOperator
from priors import GaussianPrior

F64 = torch.float64


def gaussian_problem(noise_sigma: float):
    """``N(mu, I)`` in 4-d, a 2 x 4 operator, and the closed-form posterior (Bishop 2006, eq. 2.116-2.117).

    With an isotropic prior the spectral coordinates of ``A`` are independent a priori,
    the setting in which DDRM's and DDNM's per-coordinate rules are derived.
    """
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    x = mu + torch.randn(4, generator=g, dtype=F64)
    y = (A @ x + noise_sigma * torch.randn(2, generator=g, dtype=F64))[None]
    cov = torch.linalg.inv(torch.eye(4, dtype=F64) + A.T @ A / noise_sigma**2)
    mean = cov @ (mu + A.T @ y[0] / noise_sigma**2)
    return GaussianPrior(mu, torch.eye(4, dtype=F64)), MatrixOperator(A), y, mean, cov


#: method -> (noise_sigma, steps, mean tolerance, relative covariance tolerance).  DDRM and
#: DDNM under-disperse (eta = 0.85 mixes in fresh noise that the denoiser then shrinks;
#: DDNM+ leaves the range deterministic), hence their looser covariance bounds.
GAUSSIAN_CASES = {
    "ddrm": (0.8, 20, 0.1, 0.55),
    "ddnm": (0.8, 100, 0.2, 0.45),
    "pigdm": (0.8, 100, 0.2, 0.25),
    "mcg": (1e-3, 100, 0.05, 0.2),
}
