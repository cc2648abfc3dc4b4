"""DiffPIR against exact posteriors, its data step against closed forms, and its contracts."""

from __future__ import annotations

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks import make_gmm_problem, sliced_wasserstein
from invsolve.samplers import Problem
from invsolve.samplers.diffpir import DiffPIR, gradient_data_step
from operators import FunctionOperator, MatrixOperator, Operator

F64 = torch.float64
N = 500


def matrix_function(A: torch.Tensor) -> FunctionOperator:
    """``x -> A x`` as a plain differentiable callable: no prox, so DiffPIR takes gradient steps."""
    return FunctionOperator(lambda x: x @ A.to(x).T, output_shape=lambda shape: (shape[0], A.shape[0]))


def sw_ratio(seed: int, operator=None, noise_sigma=None, **options) -> float:
    """SW(DiffPIR samples, exact posterior) / SW(prior, exact posterior), MCGdiff problem d=8, d_y=4."""
    prior, op, y, sigma_y, posterior = make_gmm_problem(8, 4, seed)
    told = sigma_y if noise_sigma is None else noise_sigma
    result = solve(y, operator or op, prior, method="diffpir", num_samples=N, noise_sigma=told, seed=seed,
                   progress=False, x_shape=(1, 8), **options)
    g = torch.Generator().manual_seed(1000 + seed)
    exact = posterior.sample(N, generator=g)
    sw = sliced_wasserstein(result.samples.reshape(N, -1), exact, 500, torch.Generator().manual_seed(1))
    return sw / sliced_wasserstein(prior.sample(N, generator=g), exact, 500, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_defaults_land_near_the_mixture_posterior(seed):
    # Measured 0.063 and 0.061 (README); the prior itself is 1.
    assert sw_ratio(seed) < 0.15


def test_a_tenfold_noise_scale_misses_the_posterior():
    # rho_t grows 100x: the prior outweighs the data and the samples drift to the prior.
    _, _, _, sigma_y, _ = make_gmm_problem(8, 4, 0)
    assert sw_ratio(0, noise_sigma=10 * sigma_y) > 0.3


def test_gradient_step_fallback_lands_near_the_posterior():
    # Seed 1 has singular values 0.44-0.65: one line-searched gradient step per level suffices.
    A = make_gmm_problem(8, 4, 1).operator.A
    assert sw_ratio(1, operator=matrix_function(A)) < 0.15


def test_gradient_step_is_exact_for_a_scaled_orthogonal_operator():
    # A = c Q: the objective is isotropic, so one exact line search reaches the prox.
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))
    A = 0.7 * Q
    x0, y = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    rho = 0.3
    exact = torch.linalg.solve(A.T @ A + rho * torch.eye(5, dtype=F64), (y @ A + rho * x0).T).T
    torch.testing.assert_close(gradient_data_step(matrix_function(A), x0, y, rho), exact)


def test_gradient_step_matches_the_cauchy_point_formula():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 6, generator=g, dtype=F64)
    x0, y = torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    rho = 0.5
    grad = (x0 @ A.T - y) @ A
    alpha = (grad**2).sum(1) / (((grad @ A.T) ** 2).sum(1) + rho * (grad**2).sum(1))
    torch.testing.assert_close(gradient_data_step(matrix_function(A), x0, y, rho), x0 - alpha[:, None] * grad)


def test_noise_level_is_read_on_the_papers_zero_one_scale():
    problem = Problem(y=torch.zeros(1, 2), operator=None, prior=None, x_shape=(1, 2), noise_sigma=0.1,
                      steps=1, generator=torch.Generator())
    # sigma_n = 0.1 / 2 = 0.05 on [0, 1]: rho = lam * 0.05^2 / sigma_t^2.
    assert DiffPIR(lam=2.0).rho(problem, 0.5) == pytest.approx(2.0 * 0.05**2 / 0.25)
    noiseless = Problem(y=torch.zeros(1, 2), operator=None, prior=None, x_shape=(1, 2), noise_sigma=0.0,
                        steps=1, generator=torch.Generator())
    assert DiffPIR().rho(noiseless, 1.0) == pytest.approx(1e-3**2)


def test_zeta_default_follows_the_operator_kind():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)

    class MaskLike(MatrixOperator):
        kind = "inpainting"

    matrix = solve(y, op, prior, method="diffpir", steps=2, noise_sigma=sigma_y, seed=0, progress=False)
    mask = solve(y, MaskLike(op.A), prior, method="diffpir", steps=2, noise_sigma=sigma_y, seed=0, progress=False)
    assert matrix.options["zeta"] == 0.1 and mask.options["zeta"] == 1.0
    assert matrix.nfe == 2


def test_same_seed_same_samples_and_rows_are_independent():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)
    run = lambda meas, seed: solve(meas, op, prior, method="diffpir", steps=10, num_samples=3,  # noqa: E731
                                   noise_sigma=sigma_y, seed=seed, progress=False).samples
    torch.testing.assert_close(run(y, 5), run(y, 5), rtol=0, atol=0)
    assert not torch.allclose(run(y, 5), run(y, 6))
    a, b = run(torch.cat([y, y + 3.0]), 5), run(torch.cat([y, y - 4.0]), 5)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-12)


def test_black_box_operator_is_refused_with_what_is_missing():
    class BlackBox(Operator):
        forward_only = True

        def forward(self, x):
            return x[:, :2]

        def output_shape(self, shape):
            return (shape[0], 2)

    prior, _, _, _, _ = make_gmm_problem(8, 4, 0)
    with pytest.raises(ValueError, match="prox or vjp"):
        solve(torch.zeros(1, 2, dtype=F64), BlackBox(), prior, method="diffpir", x_shape=(1, 8), progress=False)


@pytest.mark.parametrize("options", [{"lam": 0.0}, {"zeta": 1.5}])
def test_bad_hyperparameters_are_refused(options):
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, 0)
    with pytest.raises(ValueError):
        solve(y, op, prior, method="diffpir", noise_sigma=sigma_y, progress=False, **options)
