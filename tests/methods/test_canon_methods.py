"""The canon methods rgm, dreamguider and gen2res against closed forms and official loops.

* rgm (Jae-Moo/RGM ``restore.py`` ``PnP_algorithm.DRS``, ``restore.sh``): its prox against a dense
  solve, the closed-form Douglas-Rachford fixed point under a linear-shrinkage generator, and the
  official loop transcribed in :mod:`tests.helpers.official_canon_rules`.
"""

from __future__ import annotations

import pytest
import torch

import operators
from invsolve import solve
from invsolve.samplers.base import Problem
from invsolve.samplers.rgm import RGM_TASK_DEFAULTS, rgm_levels, rgm_prox
from operators import MatrixOperator
from priors import GaussianPrior
from tests.helpers.official_canon_rules import official_rgm_drs, official_rgm_table
from tests.helpers.posterior_problems import make_gmm_problem

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore:.* has no defaults for task:UserWarning")


def dense_matrix(op, x_shape: tuple[int, ...]) -> torch.Tensor:
    """``A`` as an ``(m, n)`` matrix, one forward call per basis vector."""
    n = int(torch.tensor(x_shape[1:]).prod())
    basis = torch.eye(n, dtype=F64).reshape(n, *x_shape[1:])
    return op(basis).reshape(n, -1).T


def bare_problem(op, y: torch.Tensor, x_shape: tuple[int, ...]) -> Problem:
    return Problem(y=y, operator=op, prior=None, x_shape=x_shape, noise_sigma=0.0, steps=1,
                   generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build", [
    lambda: operators.build("super_resolution", factor=2, method="bicubic"),
    lambda: operators.build("super_resolution", factor=2, method="average"),
    lambda: operators.build("gaussian_blur", kernel_size=5, sigma=1.0, padding="circular"),
    lambda: operators.build("inpainting", mask="random", missing=0.5, seed=1),
], ids=["sr-bicubic-svd", "sr-average", "blur-circular", "inpainting"])
def test_rgm_prox_equals_the_dense_solve(build):
    """prox_{lam ||A . - y||^2 / 2}(v) = (I + lam A^T A)^{-1} (v + lam A^T y)."""
    op, x_shape, lam = build(), (2, 3, 8, 8), 10.0
    g = torch.Generator().manual_seed(0)
    v = torch.rand(x_shape, generator=g, dtype=F64) * 2 - 1
    y = op(torch.rand(x_shape, generator=g, dtype=F64) * 2 - 1)
    A = dense_matrix(op, x_shape[:1] + x_shape[1:])
    n = A.shape[1]
    rhs = v.reshape(2, n) + lam * y.reshape(2, -1) @ A
    expected = torch.linalg.solve(torch.eye(n, dtype=F64) + lam * A.T @ A, rhs.T).T.reshape(x_shape)
    got = rgm_prox(bare_problem(op, y, x_shape), v, lam)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_rgm_table_is_the_official_one():
    a, s = rgm_levels()
    a_off, s_off = official_rgm_table()
    torch.testing.assert_close(a, a_off, rtol=1e-6, atol=0)
    torch.testing.assert_close(s[1:], s_off[1:], rtol=1e-6, atol=0)
    assert float(s[1] / a[1]) == pytest.approx(0.9574, abs=1e-3)


def test_rgm_reaches_the_closed_form_fixed_point_with_a_linear_shrinkage_generator():
    """G(x) = k x (Gaussian prior N(0, tau^2 I) at VE sigma s_1 / a_1, no noise): v = m x with
    m = 1 - alpha + alpha k, and the Douglas-Rachford fixed point solves
    ((1 - m) I + lam m A^T A) x = lam A^T y (the official loop returns x, not v = m x)."""
    g = torch.Generator().manual_seed(3)
    A = 0.6 * torch.randn(3, 5, generator=g, dtype=F64)
    y = 0.4 * torch.randn(2, 3, generator=g, dtype=F64)
    tau2, alpha, lam = 0.3, 0.5, 2.0
    prior = GaussianPrior(torch.zeros(5, dtype=F64), tau2)
    a, s = rgm_levels()
    k = tau2 / (tau2 + float(s[1] / a[1]) ** 2)
    m = 1 - alpha + alpha * k
    result = solve(y, MatrixOperator(A), prior, method="rgm", steps=400, seed=0, progress=False,
                   alpha=alpha, lam=lam, noise_factor=0.0)
    expected = torch.linalg.solve((1 - m) * torch.eye(5, dtype=F64) + lam * m * A.T @ A, lam * A.T @ y.T).T
    torch.testing.assert_close(result.image, expected, rtol=1e-9, atol=1e-9)
    assert result.nfe == 400


@pytest.mark.parametrize("levels", [1, 2])
def test_rgm_matches_the_official_drs_loop(levels):
    """Same noise draws, the mixture's exact denoiser as the generator: G(x_j, j) = D(x_j / a_j, s_j / a_j)."""
    prior, op, y, _, _ = make_gmm_problem(8, 4, 0)
    a, s = official_rgm_table()

    def G(x_t, j):
        sigma = torch.full((x_t.shape[0],), float(s[j] / a[j]), dtype=F64)
        return prior.denoise(x_t / float(a[j]), sigma)

    result = solve(y, op, prior, method="rgm", steps=6, seed=5, progress=False, alpha=0.3, lam=4.0, levels=levels)
    expected = official_rgm_drs(G, op.A, y, 0.3, 4.0, levels, 6, 0.99, torch.Generator().manual_seed(5))
    torch.testing.assert_close(result.image, expected, rtol=1e-5, atol=1e-5)


def test_rgm_takes_restore_sh_settings_for_super_resolution():
    op = operators.build("super_resolution", factor=4, method="bicubic")
    prior = GaussianPrior(torch.zeros(3, 16, 16, dtype=F64), 0.2)
    y = op(torch.zeros(1, 3, 16, 16, dtype=F64))
    result = solve(y, op, prior, method="rgm", steps=2, seed=0, progress=False)
    assert result.options["task"] == "super_resolution"
    assert {k: result.options[k] for k in ("alpha", "lam", "levels")} == dict(RGM_TASK_DEFAULTS["super_resolution"].options)
