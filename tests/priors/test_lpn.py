"""Learned proximal networks: psi is convex, f = grad psi is a proximal operator, and an LPN fitted to
the prox of the l1 norm is soft-thresholding with R = lam |x| (Fang et al., ICLR 2024)."""

import pytest
import torch

from priors import ConvexPotential, LPNPrior, load_prior
from priors.lpn import potential_gradient


def random_potential(seed: int = 0, alpha: float = 0.0, quadratic: int = 4) -> ConvexPotential:
    """A small potential with non-negative weights large enough that its nonlinearity matters."""
    torch.manual_seed(seed)
    net = ConvexPotential(channels=3, hidden=8, dilations=(1, 2, 1), beta=5.0, alpha=alpha, quadratic=quadratic)
    net.init_constrained(mean=-1.5, std=0.5, generator=torch.Generator().manual_seed(seed))
    return net.double().eval()


def hessian_quadratic_form(net: torch.nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v^T (Hessian of psi at x) v`` per item, by double backpropagation."""
    x = x.clone().requires_grad_(True)
    grad = potential_gradient(net, x, create_graph=True)
    (hv,) = torch.autograd.grad((grad * v).sum(), x)
    return (hv * v).flatten(1).sum(1)


@pytest.mark.parametrize("quadratic", [0, 4])
def test_psi_has_nonnegative_curvature_on_random_inputs(quadratic):
    net = random_potential(quadratic=quadratic)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 12, 12, generator=g, dtype=torch.float64)
    v = torch.randn(16, 3, 12, 12, generator=g, dtype=torch.float64)
    curvature = hessian_quadratic_form(net, x, v)
    assert curvature.min() > -1e-10 * curvature.abs().max()
    assert curvature.max() > 0


def test_the_curvature_check_catches_a_nonconvex_potential():
    net = random_potential(quadratic=0)
    with torch.no_grad():
        net.out.weight.neg_()  # a negative output weight: psi is concave along some directions
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 12, 12, generator=g, dtype=torch.float64)
    v = torch.randn(16, 3, 12, 12, generator=g, dtype=torch.float64)
    assert hessian_quadratic_form(net, x, v).min() < 0


def test_psi_is_midpoint_convex_on_random_pairs():
    net = random_potential(seed=2, quadratic=0)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(32, 3, 10, 10, generator=g, dtype=torch.float64)
    b = torch.randn(32, 3, 10, 10, generator=g, dtype=torch.float64)
    with torch.no_grad():
        gap = (net(a) + net(b)) / 2 - net((a + b) / 2)
    assert (gap >= -1e-10).all()
    assert gap.max() > 1e-3  # strictly convex somewhere: the pairs test something


def test_f_is_the_monotone_gradient_of_psi():
    net = random_potential(seed=4)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    fa, fb = potential_gradient(net, a), potential_gradient(net, b)
    assert ((fa - fb) * (a - b)).flatten(1).sum(1).min() >= 0  # monotone
    v = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        finite_difference = (net(a + eps * v) - net(a - eps * v)) / (2 * eps)
    torch.testing.assert_close(finite_difference, (fa * v).flatten(1).sum(1), rtol=1e-6, atol=1e-8)


def test_f_is_the_prox_of_the_regulariser_computed_from_psi():
    """``f(y) = argmin_x ||y - x||^2 / 2 + R(x)``: R from psi is finite and no nearby x does better."""
    prior = LPNPrior(random_potential(seed=6, alpha=0.2))
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    x_star = prior.prox(y)
    torch.testing.assert_close(potential_gradient(prior.potential, prior.invert(x_star)), x_star, rtol=0, atol=1e-5)
    objective_star = 0.5 * (y - x_star).flatten(1).pow(2).sum(1) + prior.regulariser(x_star)
    assert torch.isfinite(objective_star).all()
    for scale in (0.3, 0.03):
        x_other = x_star + scale * torch.randn(y.shape, generator=g, dtype=torch.float64)
        objective = 0.5 * (y - x_other).flatten(1).pow(2).sum(1) + prior.regulariser(x_other)
        assert (objective > objective_star).all()


def test_lpn_fitted_to_the_l1_prox_is_soft_thresholding():
    """A pixel-wise LPN (1x1 kernels) fitted in 400 steps to ``prox_{lam |.|}`` matches soft-thresholding,
    and its regulariser is ``lam |x|`` up to a constant."""
    lam = 0.5
    torch.manual_seed(0)
    net = ConvexPotential(channels=1, hidden=16, dilations=(1, 1, 1), kernel_size=1, beta=30.0, alpha=0.0).double()
    net.init_constrained(mean=-2.0, std=0.5, generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        x = torch.rand(1, 1, 1, 256, generator=g, dtype=torch.float64) * 4 - 2
        target = x.sign() * (x.abs() - lam).clamp_min(0)
        loss = (potential_gradient(net, x, create_graph=True) - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        net.clamp_weights()
    prior = LPNPrior(net.eval())
    grid = torch.linspace(-2, 2, 401, dtype=torch.float64).reshape(1, 1, 1, -1)
    soft = grid.sign() * (grid.abs() - lam).clamp_min(0)
    assert (prior.prox(grid) - soft).abs().max() < 0.06
    points = torch.linspace(-1.2, 1.2, 13, dtype=torch.float64).reshape(-1, 1, 1, 1)
    regulariser = prior.regulariser(points) - prior.regulariser(torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(regulariser, lam * points.flatten().abs(), rtol=0, atol=0.05)


def test_lpn_folder_round_trip_through_load_prior(tmp_path):
    net = random_potential(seed=8).float()
    LPNPrior(net, noise_sigma=0.1).save(tmp_path / "lpn", training={"steps": 0})
    loaded = load_prior(tmp_path / "lpn")
    assert isinstance(loaded, LPNPrior) and loaded.noise_sigma == 0.1
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(loaded.prox(x), LPNPrior(net).prox(x), rtol=0, atol=0)
    assert loaded.prox(x).shape == x.shape


def test_lpn_refuses_a_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        LPNPrior(lambda x: x.sum())
