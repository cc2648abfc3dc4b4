"""DRP (Hu et al., ICLR 2024; official code wustl-cig/DRP): fixed points on a linear Gaussian problem,
the H^T H-weighted data step, the official per-task settings, prior refinement, capability checks."""

import dataclasses

import pytest
import torch
from torch import nn

import operators
from invsolve import solve
from invsolve.samplers import Problem
from invsolve.samplers.drp import DRP
from operators import MatrixOperator
from priors import GaussianPrior, RestorerPrior
from tests.helpers.restorers import LinearRestorer


def gaussian_toy(seed: int):
    """x ~ N(0, C) in R^3, the restorer's degradation H (2 x 3) with noise s_e, the task's A (2 x 3), y."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(3, 3, generator=g, dtype=torch.float64)
    C = B @ B.T + 0.5 * torch.eye(3, dtype=torch.float64)
    H = torch.randn(2, 3, generator=g, dtype=torch.float64)
    A = torch.randn(2, 3, generator=g, dtype=torch.float64)
    noise = 0.3
    K = C @ H.T @ torch.linalg.inv(H @ C @ H.T + noise**2 * torch.eye(2, dtype=torch.float64))  # linear MMSE
    y = torch.randn(1, 2, generator=g, dtype=torch.float64)
    return C, H, A, K, y


def test_drp_converges_to_the_closed_form_fixed_point_of_a_linear_mmse_restorer():
    """With R(v) = K v the DRP map is affine; its fixed point solves
    (A^T A + rho tau H^T H (I - K H)) x = A^T y, and the output is R(H x*) = K H x*."""
    _, H, A, K, y = gaussian_toy(seed=1)  # a seed whose DRP map contracts by 0.92 per iteration
    tau, lam = 0.5, 0.3
    restorer = RestorerPrior(LinearRestorer(K), degradation=MatrixOperator(H))
    states = []
    result = solve(
        y, MatrixOperator(A), restorer, method="drp", steps=400, seed=0, progress=False,
        lam=lam, relaxation=tau, final_relaxation=tau, callback=lambda info: states.append(info["x"]),
    )
    eye = torch.eye(3, dtype=torch.float64)
    system = A.T @ A + lam * tau * H.T @ H @ (eye - K @ H)
    x_star = torch.linalg.solve(system, A.T @ y[0])
    torch.testing.assert_close(states[-1][0], x_star, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.image[0], K @ H @ x_star, rtol=1e-9, atol=1e-9)
    assert result.nfe == 400  # one restorer call per iteration


def test_drp_data_step_solves_the_hth_weighted_normal_equations():
    """rho = lam f_H^2 / f_A^2: circular blur A (f_A = 1), x2 bicubic H (f_H = 2), many CG steps."""
    blur = operators.build("gaussian_blur", kernel_size=5, sigma=0.6, padding="circular")
    H = operators.build("super_resolution", factor=2, method="bicubic")
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    z = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    problem = Problem(y=y, operator=blur, prior=None, x_shape=(1, 3, 16, 16), noise_sigma=0.05, steps=1,
                      generator=g)
    method = DRP(lam=0.04, cg_iterations=300)
    u = method.data_step(problem, z, H)
    rho = 0.04 * 4
    lhs = blur.adjoint(blur(u)) + rho * H.adjoint(H(u))
    rhs = blur.adjoint(y) + rho * H.adjoint(H(z))
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-8)


def test_identity_degradation_uses_the_operator_prox():
    A = MatrixOperator(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    y, z = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    problem = Problem(y=y, operator=A, prior=None, x_shape=(2, 3), noise_sigma=0.0, steps=1, generator=g)
    u = DRP(lam=0.04).data_step(problem, z, None)
    torch.testing.assert_close(A.adjoint(A(u)) + 0.04 * u, A.adjoint(y) + 0.04 * z)


@pytest.mark.parametrize(
    "operator, expected",
    [
        (operators.build("gaussian_blur", kernel_size=9, sigma=2.0), (0.04, 0.1, 0.05, 5)),
        (operators.build("super_resolution", factor=4), (0.05, 0.1, 0.05, 11)),
        (operators.build("denoising"), (0.04, 0.02, 0.02, 0)),
    ],
)
def test_official_settings_per_task(operator, expected):
    """deblur_experments/DRP_deblur_k1.py, sisr_experiments/DRP_sisr_2x_k1.py, denoising_experiments/DRP_denoising_2x.py."""
    problem = Problem(y=torch.zeros(1, 3, 8, 8), operator=operator, prior=None, x_shape=(1, 3, 8, 8),
                      noise_sigma=0.0, steps=35, generator=torch.Generator())
    method = DRP(**DRP.task_options(DRP.defaults_row(operator.task, operator.kind), 0.0)).resolved(problem)
    assert (method.lam, method.relaxation, method.final_relaxation, method.final_iterations) == expected
    assert DRP.default_steps == 35 and method.cg_iterations == 3


class CountingNetwork(nn.Module):
    def __init__(self, factor: int):
        super().__init__()
        self.factor, self.calls = factor, 0

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.interpolate(v, scale_factor=self.factor, mode="bicubic")


def test_prior_refinement_switches_restorer_for_the_final_iterations():
    first, second = CountingNetwork(4), CountingNetwork(2)
    coarse = RestorerPrior(first, {"operator": "super_resolution", "factor": 4})
    fine = RestorerPrior(second, {"operator": "super_resolution", "factor": 2})
    op = operators.build("gaussian_blur", kernel_size=5, sigma=1.0, padding="circular")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = solve(op(x), op, coarse, method="drp", steps=12, seed=0, progress=False, refinement=fine)
    assert (first.calls, second.calls) == (7, 5)
    assert result.nfe == 12 and torch.isfinite(result.image).all()
    assert "RestorerPrior" in result.options["refinement"]


def test_capability_errors_both_ways():
    restorer = RestorerPrior(CountingNetwork(2), {"operator": "super_resolution", "factor": 2})
    op = operators.build("gaussian_blur", kernel_size=5, sigma=1.0)
    y = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="needs pixel.*methods that work here: drp"):
        solve(y, op, restorer, method="dps", progress=False)
    gaussian = GaussianPrior(torch.zeros(3, 16, 16), 0.5)
    with pytest.raises(ValueError, match="'drp' needs restorer"):
        solve(y, op, gaussian, method="drp", progress=False)


def test_restorer_prior_checks_its_degradation():
    with pytest.raises(TypeError, match="degradation"):
        RestorerPrior(CountingNetwork(2), degradation="super_resolution")
    with pytest.raises(ValueError, match="'operator'"):
        RestorerPrior(CountingNetwork(2), degradation={"factor": 2})
    assert dataclasses.is_dataclass(DRP)
