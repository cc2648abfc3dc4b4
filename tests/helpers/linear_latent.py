"""A latent problem with an exact posterior: a linear orthonormal "autoencoder" (``encode = Q^T x``,
``decode = Q z``) around a Gaussian-mixture latent prior, and a pixel operator ``A`` with orthonormal
rows (``A A^T = I``, where PSLD's gluing is exact).  Then ``y = A Q z + n`` and the posterior on ``z``
is the mixture ``prior.posterior(A Q, y, sigma_y)``."""

from __future__ import annotations

import torch

from invsolve.benchmarks.gmm_problem import grid_means
from operators import MatrixOperator
from priors import GaussianMixturePrior, LatentPrior
from priors.adm import linear_alphas_cumprod

F64 = torch.float64


class LinearLatentPrior(LatentPrior):
    """A latent prior whose autoencoder is ``x = Q z`` with orthonormal columns ``Q``."""

    def __init__(self, latent: GaussianMixturePrior, Q: torch.Tensor):
        self.latent, self.Q = latent, Q
        self.sigma_min, self.sigma_max = latent.sigma_min, latent.sigma_max
        self.data_shape = latent.data_shape
        if latent.alphas_cumprod is not None:
            self.sigmas = latent.sigmas

    def denoise(self, z, sigma):
        return self.latent.denoise(z, sigma)

    def encode(self, x):
        return x @ self.Q.to(x)

    def decode(self, z):
        return z @ self.Q.to(z).T

    def latent_shape(self, pixel_shape):
        return (pixel_shape[0], self.Q.shape[1])


def make_linear_problem(table: bool = False):
    """Latent dimension 8, pixels 12, 4 measurements, sigma_y = 0.05 (float64); ``table`` makes the
    latent mixture a DDPM model on the linear 1000-step table."""
    d, pixels, m, noise = 8, 12, 4, 0.05
    g = torch.Generator().manual_seed(0)
    abar = linear_alphas_cumprod() if table else None
    latent = GaussianMixturePrior(torch.randn(25, generator=g, dtype=F64) ** 2, grid_means(d), 1.0,
                                  alphas_cumprod=abar)
    basis, _ = torch.linalg.qr(torch.randn(pixels, pixels, generator=g, dtype=F64))
    Q, Q_perp = basis[:, :d], basis[:, d:]
    U, _, Vh = torch.linalg.svd(torch.randn(m, d, generator=g, dtype=F64))
    s = 0.2 + 0.8 * torch.rand(m, generator=g, dtype=F64).sort(descending=True).values
    effective = U @ torch.diag(s) @ Vh[:m]
    A = effective @ Q.T + U @ torch.diag((1 - s**2).sqrt()) @ Q_perp[:, :m].T
    torch.testing.assert_close(A @ A.T, torch.eye(m, dtype=F64))
    torch.testing.assert_close(A @ Q, effective)
    z_star = latent.sample(1, g)
    y = z_star @ effective.T + noise * torch.randn(1, m, generator=g, dtype=F64)
    return LinearLatentPrior(latent, Q), MatrixOperator(A), y, noise, latent.posterior(effective, y, noise)
