"""Latent methods (latent DPS, PSLD, ReSample) against a closed-form posterior, and end to end
on a tiny latent diffusion pipeline saved and loaded here.

The exact check: a linear orthonormal "autoencoder" (``encode = Q^T x``, ``decode = Q z``)
around a Gaussian-mixture latent prior, and a pixel operator ``A`` with orthonormal rows
(``A A^T = I``, where PSLD's gluing is exact).  Then ``y = A Q z + n`` and the posterior on
``z`` is the mixture ``prior.posterior(A Q, y, sigma_y)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks.gmm_problem import grid_means
from invsolve.samplers.latent import minimize_rows, row_mse
from invsolve.samplers.resample import resampling_fusion
from operators import FunctionOperator, Inpainting, MatrixOperator
from priors import GaussianMixturePrior, LatentPrior, load_prior
from tests.posterior_problems import sliced_wasserstein
from tests.test_latent_priors import save_latent_pipelines

F64 = torch.float64


class LinearLatentPrior(LatentPrior):
    """A latent prior whose autoencoder is ``x = Q z`` with orthonormal columns ``Q``."""

    def __init__(self, latent: GaussianMixturePrior, Q: torch.Tensor):
        self.latent, self.Q = latent, Q
        self.sigma_min, self.sigma_max = latent.sigma_min, latent.sigma_max
        self.data_shape = latent.data_shape

    def denoise(self, z, sigma):
        return self.latent.denoise(z, sigma)

    def encode(self, x):
        return x @ self.Q.to(x)

    def decode(self, z):
        return z @ self.Q.to(z).T

    def latent_shape(self, pixel_shape):
        return (pixel_shape[0], self.Q.shape[1])


@pytest.fixture(scope="module")
def linear_problem():
    """Latent dimension 8, pixels 12, 4 measurements, sigma_y = 0.05 (float64)."""
    d, pixels, m, noise = 8, 12, 4, 0.05
    g = torch.Generator().manual_seed(0)
    latent = GaussianMixturePrior(torch.randn(25, generator=g, dtype=F64) ** 2, grid_means(d), 1.0)
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


def sw_to_posterior(z: torch.Tensor, posterior: GaussianMixturePrior) -> float:
    exact = posterior.sample(z.shape[0], torch.Generator().manual_seed(0))
    return sliced_wasserstein(z, exact, 500, torch.Generator().manual_seed(1))


def latent_samples(problem, method: str, samples: int, steps: int, **options) -> torch.Tensor:
    prior, op, y, noise, _ = problem
    result = solve(y, op, prior, method=method, steps=steps, seed=0, num_samples=samples,
                   noise_sigma=noise, progress=False, **options)
    return prior.encode(result.samples[:, 0])


#: (method, options, tolerance as a fraction of the prior's SW distance, broken options).
EXACT_CASES = [
    ("latent_dps", {"step_size": 0.3}, 0.05, {"step_size": -0.3}),
    ("psld", {"omega": 0.3, "gamma": 0.3}, 0.05, {"omega": -0.3, "gamma": 0.3}),
    ("resample", {"interval": 5, "pixel_max_iters": 200, "latent_max_iters": 100}, 0.8,
     {"interval": 5, "pixel_max_iters": 200, "latent_max_iters": 100, "dps_step_size": -0.3}),
]


@pytest.mark.parametrize("method, options, tolerance, broken", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_latent_methods_land_near_the_exact_posterior(linear_problem, method, options, tolerance, broken) -> None:
    """Within ``tolerance`` of the posterior in sliced Wasserstein distance, relative to the
    prior's distance; the same method with a flipped guidance sign misses it."""
    prior, _, _, _, posterior = linear_problem
    samples, steps = (200, 40) if method != "resample" else (150, 60)
    reference = sw_to_posterior(prior.latent.sample(samples, torch.Generator().manual_seed(3)), posterior)
    assert reference > 5
    good = sw_to_posterior(latent_samples(linear_problem, method, samples, steps, **options), posterior)
    bad = sw_to_posterior(latent_samples(linear_problem, method, samples, steps, **broken), posterior)
    assert good < tolerance * reference, (good, reference)
    assert bad > tolerance * reference, (bad, reference)


def test_resampling_fusion_is_the_gaussian_product() -> None:
    """Mean and variance of ``N(z0_y, s^2) x N(z'; z, tau^2)`` by precision weighting."""
    z0_y, z_prior = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64)
    sigma, s, gamma = 2.0, 1.5, 40.0
    tau2 = gamma * s**2 * (sigma**2 - s**2) / sigma**2
    precision = 1 / s**2 + 1 / tau2
    mean, std = resampling_fusion(z0_y, z_prior, sigma, s, gamma)
    torch.testing.assert_close(mean, (z0_y / s**2 + z_prior / tau2) / precision)
    assert math.isclose(std, precision**-0.5, rel_tol=1e-12)
    unchanged, zero = resampling_fusion(z0_y, z_prior, sigma, s, 0.0)
    assert zero == 0 and torch.equal(unchanged, z_prior)


def test_per_sample_minimiser_reaches_the_consistent_set_row_by_row() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 6, generator=g, dtype=F64)
    y = torch.randn(2, 3, generator=g, dtype=F64)
    init = torch.randn(2, 6, generator=g, dtype=F64)
    both = minimize_rows(lambda x: row_mse(y - x @ A.T), init, 1e-2, 3000, 1e-8, 0.0)
    assert row_mse(y - both @ A.T).max() < 1e-6
    alone = minimize_rows(lambda x: row_mse(y[:1] - x @ A.T), init[:1], 1e-2, 3000, 1e-8, 0.0)
    torch.testing.assert_close(both[:1], alone, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent-methods")
    save_latent_pipelines(root)
    return root


#: ReSample on 12 steps: consistency at i = 5 (pixel stage) and i = 7 (latent stage).
RESAMPLE_SMALL = {"interval": 2, "lookahead_steps": 2, "latent_start": 0.5, "pixel_max_iters": 20,
                  "latent_max_iters": 10, "latent_patience": 5}
END_TO_END = [
    ("latent_dps", 4, {}, 4, 4, 0),
    ("psld", 4, {}, 4, 4, 4),
    ("resample", 12, RESAMPLE_SMALL, 12 + 2 * 2, None, 1),
]


@pytest.mark.parametrize("layout", ["ldm-vq", "sd"])
@pytest.mark.parametrize("method, steps, options, nfe, decodes, encodes", END_TO_END, ids=[c[0] for c in END_TO_END])
def test_latent_methods_run_end_to_end_on_a_saved_pipeline(tiny_ldm, layout, method, steps, options, nfe,
                                                           decodes, encodes) -> None:
    prior = load_prior(tiny_ldm / layout)
    op = Inpainting("box", size=8, shape=(16, 16))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op.measure(x, 0.05, torch.Generator().manual_seed(1))
    result = solve(y, op, prior, method=method, steps=steps, seed=3, noise_sigma=0.05, progress=False, **options)
    again = solve(y, op, prior, method=method, steps=steps, seed=3, noise_sigma=0.05, progress=False, **options)
    assert result.image.shape == (1, 3, 16, 16) and torch.isfinite(result.image).all()
    torch.testing.assert_close(result.image, again.image, rtol=0, atol=0)
    assert result.nfe == nfe
    per_solve_decodes = prior.decode_calls / 2
    if decodes is not None:
        assert per_solve_decodes == decodes + 1
    assert prior.encode_calls / 2 == encodes
    assert (result.decoder_calls, result.encoder_calls) == (per_solve_decodes, encodes)


def test_latent_methods_reject_pixel_priors_and_psld_needs_an_adjoint(linear_problem) -> None:
    prior, op, y, noise, _ = linear_problem
    with pytest.raises(ValueError, match="method 'psld' needs latent"):
        solve(y, op, prior.latent, method="psld", steps=2, progress=False)
    black_box = FunctionOperator(lambda x: x @ op.A.T)
    with pytest.raises(ValueError, match="method 'psld' needs adjoint.*latent_dps"):
        solve(y, black_box, prior, method="psld", steps=2, progress=False, x_shape=(1, 12))
