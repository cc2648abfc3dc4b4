"""DAPS against exact posteriors, its step-size conversion, grid and cost."""

from __future__ import annotations

import math

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks import make_gmm_problem, sliced_wasserstein
from invsolve.samplers import Problem
from invsolve.samplers.daps import DAPS
from operators import FunctionOperator, MatrixOperator
from priors import GaussianPrior

F64 = torch.float64


def sw_ratio(seed: int, n: int = 500, **options) -> float:
    """SW(DAPS samples, exact posterior) / SW(prior, exact posterior), MCGdiff problem d=8, d_y=4."""
    prior, op, y, sigma_y, posterior = make_gmm_problem(8, 4, seed)
    result = solve(y, op, prior, method="daps", num_samples=n, noise_sigma=sigma_y, seed=seed, progress=False,
                   **options)
    g = torch.Generator().manual_seed(1000 + seed)
    exact = posterior.sample(n, generator=g)
    sw = sliced_wasserstein(result.samples.reshape(n, -1), exact, 500, torch.Generator().manual_seed(1))
    return sw / sliced_wasserstein(prior.sample(n, generator=g), exact, 500, torch.Generator().manual_seed(1))


def test_defaults_land_near_the_mixture_posterior():
    assert sw_ratio(0) < 0.2  # measured 0.11 (seed 1: 0.03)


def test_a_chain_that_does_not_move_misses_the_posterior():
    # What the paper's absolute lr = 1e-4 does at tau ~ 0.5: the Langevin chain stays at the
    # unconditional x0_hat and DAPS samples the prior.
    assert sw_ratio(1, n=200, steps=50, lr=1e-8) > 0.5


def test_gaussian_posterior_mean_and_spread():
    g = torch.Generator().manual_seed(3)
    L = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    C = L @ L.T + 0.5 * torch.eye(4, dtype=F64)
    mu = torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64)  # ||A||^2 ~ 8: the step must scale with it
    noise_sigma = 0.1
    y = (A @ (mu + torch.linalg.cholesky(C) @ torch.randn(4, generator=g, dtype=F64))
         + noise_sigma * torch.randn(2, generator=g, dtype=F64))[None]
    gain = C @ A.T @ torch.linalg.inv(A @ C @ A.T + noise_sigma**2 * torch.eye(2, dtype=F64))
    mean, cov = mu + gain @ (y[0] - A @ mu), C - gain @ A @ C
    result = solve(y, MatrixOperator(A), GaussianPrior(mu, C), method="daps", num_samples=1000,
                   noise_sigma=noise_sigma, seed=0, progress=False)
    x = result.samples.reshape(1000, -1)
    assert (x.mean(0) - mean).norm() < 0.1  # measured 0.03; posterior std 0.4-0.77
    ratio = x.std(0) / cov.diagonal().sqrt()
    assert ((ratio > 0.9) & (ratio < 1.35)).all(), ratio  # DAPS over-disperses by ~20 %


def test_step_is_the_papers_at_its_likelihood_and_scales_with_curvature():
    paper = DAPS(tau=0.01 / math.sqrt(2), lr=1e-4)  # the paper's ||Ax - y||^2 / 0.01^2 data term
    assert paper.step_size(0.1, 0.0, 1.0) == pytest.approx(1e-4, rel=0.01)
    assert paper.step_size(100.0, 1.0, 1.0) == pytest.approx(1e-6, rel=0.01)  # decayed to lr_min_ratio
    wide = DAPS(tau=0.5, lr=1e-4)
    # A fixed fraction (2) of the inverse curvature ||A||^2 / tau^2 + 1 / sigma^2.
    assert wide.step_size(0.3, 0.0, 4.0) == pytest.approx(2 / (4.0 / 0.25 + 1 / 0.09))


def test_operator_norm_by_power_iteration():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 7, generator=g, dtype=F64)
    problem = Problem(y=torch.zeros(5, 3, dtype=F64), operator=MatrixOperator(A), prior=None, x_shape=(5, 7),
                      noise_sigma=0.1, steps=1, generator=torch.Generator().manual_seed(0))
    assert DAPS().operator_norm_squared(problem) == pytest.approx(float(torch.linalg.matrix_norm(A, 2) ** 2),
                                                                  rel=1e-6)
    nonlinear = Problem(y=torch.zeros(5, 3, dtype=F64), operator=FunctionOperator(torch.tanh), prior=None,
                        x_shape=(5, 3), noise_sigma=0.1, steps=1, generator=torch.Generator())
    assert DAPS().operator_norm_squared(nonlinear) == 1.0
    assert DAPS(operator_norm=3.0).operator_norm_squared(nonlinear) == 9.0


def test_true_nfe_grid_clipping_and_tau_default():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)
    prior.sigma_max = 50.0
    seen = []
    result = solve(y, op, prior, method="daps", steps=4, noise_sigma=sigma_y, seed=0, progress=False,
                   langevin_steps=2, callback=lambda state: seen.append(state["sigma"]))
    assert result.nfe == 4 * 5
    assert seen[0] == pytest.approx(50.0) and seen[-1] == pytest.approx(0.1)
    assert result.options["tau"] == sigma_y and result.options["lr"] == 1e-4

    class PhaseLike(MatrixOperator):
        kind = "phase_retrieval"

    phase = solve(y, PhaseLike(op.A), prior, method="daps", steps=1, noise_sigma=sigma_y, seed=0, progress=False,
                  langevin_steps=1)
    assert phase.options["lr"] == 5e-5
    noiseless = solve(y, op, prior, method="daps", steps=2, seed=0, progress=False, langevin_steps=1,
                      ode_steps=1)
    assert noiseless.options["tau"] == 0.01 and noiseless.nfe == 2


def test_same_seed_same_samples_and_rows_are_independent():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)
    run = lambda meas, seed: solve(meas, op, prior, method="daps", steps=5, num_samples=2,  # noqa: E731
                                   noise_sigma=sigma_y, seed=seed, progress=False, langevin_steps=5).samples
    torch.testing.assert_close(run(y, 1), run(y, 1), rtol=0, atol=0)
    assert not torch.allclose(run(y, 1), run(y, 2))
    a, b = run(torch.cat([y, y + 3.0]), 1), run(torch.cat([y, y - 4.0]), 1)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("options", [{"tau": 0.0}, {"lr": -1.0}, {"sigma_min": 200.0}, {"ode_steps": 0}])
def test_bad_options_are_refused(options):
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)
    with pytest.raises(ValueError):
        solve(y, op, prior, method="daps", steps=2, noise_sigma=sigma_y, progress=False, **options)
