"""PnP-ADMM / PGD (official LPN code, lpn/inverse_celeba.py): closed-form fixed points with a known prox,
the exact Gaussian posterior mean with a Gaussian prior's denoiser, and an LPN end to end."""

import pytest
import torch

import operators
from invsolve import solve
from operators import MatrixOperator
from priors import ConvexPotential, GaussianPrior, LPNPrior


class ShrinkProx:
    """The prox of ``g(x) = c ||x||^2 / 2``: ``v / (1 + c)`` (a proximal prior with a known answer)."""

    prior_kind = "proximal"
    data_range = None

    def __init__(self, c: float):
        self.c = c

    def prox(self, v: torch.Tensor) -> torch.Tensor:
        return v / (1 + self.c)


def matrix_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = 0.5 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = 0.3 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    return A, y


def test_admm_converges_to_the_minimiser_of_scale_data_term_plus_rho_g():
    """Order "132" with z = prox_g(x + u) (the ADMM weight unused, as the official LPN) has the fixed point
    argmin scale ||y - A x||^2 + rho g(x); here (2 scale A^T A + rho c I) x = 2 scale A^T y."""
    A, y = matrix_problem()
    c, rho, scale = 0.7, 0.5, 0.5
    result = solve(y, MatrixOperator(A), ShrinkProx(c), method="pnp_admm", steps=300, seed=0,
                   progress=False, rho=rho, scale=scale)
    expected = torch.linalg.solve(2 * scale * A.T @ A + rho * c * torch.eye(5, dtype=torch.float64), 2 * scale * A.T @ y.T).T
    torch.testing.assert_close(result.image, expected, rtol=1e-8, atol=1e-8)
    assert result.nfe == 300


def test_pgd_converges_to_the_minimiser_of_half_data_term_plus_g_over_eta():
    """x = prox_g(x - eta A^T (A x - y)) has the fixed point argmin ||y - A x||^2 / 2 + g(x) / eta."""
    A, y = matrix_problem(1)
    c, eta = 0.4, 1.0
    result = solve(y, MatrixOperator(A), ShrinkProx(c), method="pnp_admm", steps=400, seed=0, progress=False,
                   solver="pgd", step_size=eta)
    expected = torch.linalg.solve(A.T @ A + c / eta * torch.eye(5, dtype=torch.float64), A.T @ y.T).T
    assert expected.abs().max() < 1  # inside the [-1, 1] box PGD clamps to
    torch.testing.assert_close(result.image, expected, rtol=1e-8, atol=1e-8)


def test_gaussian_denoiser_at_the_default_level_gives_the_exact_posterior_mean():
    """With D(v, s) = mu + C (C + s^2 I)^{-1} (v - mu) (the prox of s^2 (x-mu)^T C^{-1} (x-mu) / 2) and the
    default s^2 = 2 scale sigma_y^2 / rho, the ADMM fixed point is the MAP = mean of the Gaussian posterior."""
    g = torch.Generator().manual_seed(2)
    B = torch.randn(4, 4, generator=g, dtype=torch.float64)
    prior = GaussianPrior(0.2 * torch.randn(4, generator=g, dtype=torch.float64), 0.1 * B @ B.T + 0.05 * torch.eye(4, dtype=torch.float64))
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = torch.randn(1, 2, generator=g, dtype=torch.float64)
    noise = 0.2
    result = solve(y, MatrixOperator(A), prior, method="pnp_admm", steps=500, seed=0, progress=False, noise_sigma=noise)
    exact = prior.posterior(A, y, noise_sigma=noise)
    torch.testing.assert_close(result.image[0], exact.means[0], rtol=1e-7, atol=1e-7)
    assert result.options["denoiser_sigma"] == pytest.approx((2 * 0.5 / 0.1) ** 0.5 * noise)


def test_lpn_prior_end_to_end_and_refused_by_diffusion_methods():
    torch.manual_seed(0)
    potential = ConvexPotential(hidden=8, dilations=(1, 2), quadratic=3)
    potential.init_constrained()
    prior = LPNPrior(potential.eval(), noise_sigma=0.1)
    op = operators.build("gaussian_blur", kernel_size=9, sigma=1.5, padding="circular")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = op.measure(x, 0.05, generator=torch.Generator().manual_seed(2))
    result = solve(y, op, prior, method="pnp_admm", seed=0, noise_sigma=0.05, progress=False)
    assert result.image.shape == x.shape and torch.isfinite(result.image).all()
    assert result.nfe == 20 and result.options["denoiser_sigma"] is None
    with pytest.raises(ValueError, match="'diffpir' needs pixel.*methods that work here: pnp_admm"):
        solve(y, op, prior, method="diffpir", progress=False)


def test_bad_options_are_refused():
    A, y = matrix_problem()
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(y, MatrixOperator(A), ShrinkProx(0.1), method="pnp_admm", progress=False, solver="hqs")
    with pytest.raises(ValueError, match="init must be one of"):
        solve(y, MatrixOperator(A), ShrinkProx(0.1), method="pnp_admm", progress=False, init="random")
    with pytest.raises(ValueError, match="denoiser_sigma sets a diffusion prior"):
        solve(y, MatrixOperator(A), ShrinkProx(0.1), method="pnp_admm", progress=False, denoiser_sigma=0.1)
