"""Speed edits inside method files keep the maths: DAPS's fused Langevin step (``A^T A x - A^T y`` with
``A^T y`` computed once) is the textbook step ``x - eta grad U + sqrt(2 eta) z``, and its operator
applications are still counted."""

import math

import torch

from invsolve import solve
from invsolve.samplers import Problem
from invsolve.samplers.daps import DAPS
from operators import GaussianBlur, MatrixOperator
from priors import GaussianPrior

F64 = torch.float64


def textbook_langevin(op, y, x0_hat, sigma, step, tau, steps, generator):
    """``x <- x - step (2 A^T (A x - y) / tau^2 + (x - x0_hat) / sigma^2) + sqrt(2 step) z``."""
    x = x0_hat
    for _ in range(steps):
        grad = 2 / tau**2 * op.adjoint(op(x) - y) + (x - x0_hat) / sigma**2
        x = x - step * grad + math.sqrt(2 * step) * torch.randn(x.shape, generator=generator, dtype=F64)
    return x


def test_fused_langevin_is_the_textbook_step():
    g = torch.Generator().manual_seed(0)
    op = MatrixOperator(torch.randn(5, 8, generator=g, dtype=F64) / 3)
    x0_hat = torch.randn(3, 8, generator=g, dtype=F64)
    y = torch.randn(3, 5, generator=g, dtype=F64)
    def problem():
        return Problem(y=y, operator=op, prior=None, x_shape=(3, 8), noise_sigma=0.05, steps=1,
                       generator=torch.Generator().manual_seed(4))

    daps = DAPS(langevin_steps=30)
    fused_problem = problem()
    fused = daps.langevin(fused_problem, x0_hat, sigma=0.7, step=2e-5, adjoint_y=op.adjoint(y))
    expected = textbook_langevin(op, y, x0_hat, 0.7, 2e-5, daps.tau, 30, torch.Generator().manual_seed(4))
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-11)
    assert fused_problem.fused_operator_calls == 30 * 3
    plain = daps.langevin(problem(), x0_hat, sigma=0.7, step=2e-5)  # without A^T y: op(x), then the adjoint
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-11)
    assert (expected - x0_hat).abs().max() > 1e-3  # the chain moved


def test_daps_counts_its_fused_operator_applications():
    prior = GaussianPrior(torch.zeros(1, 16, 16), 0.25)
    op = GaussianBlur(kernel_size=5, sigma=1.0, padding="reflect")
    y = op.measure(torch.zeros(2, 1, 16, 16), 0.05, torch.Generator().manual_seed(0))
    result = solve(y, op, prior, method="daps", steps=3, langevin_steps=7, seed=0, noise_sigma=0.05,
                   progress=False, num_samples=2)
    assert result.operator_calls == 3 * 7
    assert result.nfe == 3 * 5
