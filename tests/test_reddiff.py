"""RED-Diff: a MAP-like estimate checked against closed-form posterior modes."""

from __future__ import annotations

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks import make_gmm_problem
from operators import FunctionOperator, MatrixOperator
from priors import GaussianPrior

F64 = torch.float64


def gaussian_problem(noise_sigma: float = 0.01):
    """A 4-d Gaussian prior (full covariance), a 2 x 4 operator and the closed-form posterior mean."""
    g = torch.Generator().manual_seed(3)
    L = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    C = L @ L.T + 0.5 * torch.eye(4, dtype=F64)
    mu = torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    x = mu + torch.linalg.cholesky(C) @ torch.randn(4, generator=g, dtype=F64)
    y = (A @ x + noise_sigma * torch.randn(2, generator=g, dtype=F64))[None]
    # Gaussian conditioning (Bishop 2006, eq. 2.116): the MAP is the posterior mean.
    gain = C @ A.T @ torch.linalg.inv(A @ C @ A.T + noise_sigma**2 * torch.eye(2, dtype=F64))
    return GaussianPrior(mu, C), MatrixOperator(A), y, mu + gain @ (y[0] - A @ mu)


def test_gaussian_prior_estimate_is_the_closed_form_map():
    prior, op, y, map_estimate = gaussian_problem()
    result = solve(y, op, prior, method="reddiff", num_samples=500, noise_sigma=0.01, seed=0, progress=False)
    x = result.samples.reshape(500, -1)
    assert (x.mean(0) - map_estimate).norm() < 0.1  # measured 0.05; prior std ~1.06
    assert (x - map_estimate).norm(dim=1).quantile(0.95) < 1.0  # optimisation noise, not posterior spread
    assert result.nfe == 1000


def test_a_wrong_regularisation_weight_misses_the_map():
    # lam = 0 drops the prior: the estimate stays at A^+ y, far from the MAP in the null space.
    prior, op, y, map_estimate = gaussian_problem()
    result = solve(y, op, prior, method="reddiff", num_samples=100, noise_sigma=0.01, seed=0, progress=False, lam=0.0)
    assert (result.samples.reshape(100, -1).mean(0) - map_estimate).norm() > 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_mixture_estimates_sit_at_the_dominant_posterior_mode(seed):
    prior, op, y, sigma_y, posterior = make_gmm_problem(8, 4, seed)
    result = solve(y, op, prior, method="reddiff", num_samples=200, noise_sigma=sigma_y, seed=seed, progress=False)
    x = result.samples.reshape(200, -1)
    dominant = int(posterior.weights.argmax())
    distances = torch.cdist(x, posterior.means)
    # Neighbouring prior means are 16 apart; the posterior std per coordinate is <= 1.
    assert (distances.argmin(1) == dominant).double().mean() >= 0.9
    assert distances[:, dominant].median() < 4.0


def test_rows_are_independent_optimisations():
    prior, op, y, _ = gaussian_problem()
    run = lambda meas: solve(meas, op, prior, method="reddiff", steps=50, num_samples=2,  # noqa: E731
                             seed=3, progress=False).samples
    a, b = run(torch.cat([y, y + 5.0])), run(torch.cat([y, 10 * y]))
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(run(y), run(y), rtol=0, atol=0)


def test_initialisation_choices():
    prior, op, y, _ = gaussian_problem()
    kwargs = dict(steps=1, seed=0, progress=False, lr=1e-12)
    start = lambda operator, init: solve(y, operator, prior, method="reddiff", init=init,  # noqa: E731
                                         x_shape=(1, 4), **kwargs).image
    torch.testing.assert_close(start(op, "pinv"), op.pinv(y))
    torch.testing.assert_close(start(op, "adjoint"), op.adjoint(y))
    torch.testing.assert_close(start(op, "zeros"), torch.zeros(1, 4, dtype=F64))
    black = FunctionOperator(lambda x: x @ op.A.to(x).T, output_shape=lambda shape: (shape[0], 2))
    torch.testing.assert_close(start(black, "auto"), torch.zeros(1, 4, dtype=F64))
    torch.testing.assert_close(start(op, "auto"), op.pinv(y))  # noiseless: the paper's A^+ y
    noisy = solve(y, op, prior, method="reddiff", x_shape=(1, 4), noise_sigma=0.1, **kwargs).image
    A = op.A.to(F64)  # noisy: the Tikhonov solution (A^T A + sigma_y^2 I)^-1 A^T y, written out
    tikhonov = torch.linalg.solve(A.T @ A + 0.01 * torch.eye(4, dtype=F64), A.T @ y[0])
    torch.testing.assert_close(noisy[0], tikhonov)
    with pytest.raises(ValueError, match="pinv"):
        start(black, "pinv")


@pytest.mark.parametrize("options", [{"weighting": "cubic"}, {"init": "random"}, {"lr": 0.0}])
def test_bad_options_are_refused(options):
    prior, op, y, _ = gaussian_problem()
    with pytest.raises(ValueError):
        solve(y, op, prior, method="reddiff", steps=2, progress=False, **options)
