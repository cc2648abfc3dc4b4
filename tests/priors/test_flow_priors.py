"""Flow priors: the flow/VE conversion, the scheduler's time grid, ``from_velocity``, the Gaussian
mixture's exact velocity, and ``natural-64`` seen as a velocity field.

Grid reference: diffusers ``FlowMatchEulerDiscreteScheduler.set_timesteps``
(``diffusers/schedulers/scheduling_flow_match_euler_discrete.py``), built and called here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invsolve.samplers import Problem
from invsolve.samplers.flow_path import flow_denoise, velocity
from priors import GaussianMixturePrior, VelocityPrior, from_velocity, load_prior
from priors.flow import (
    T_MAX,
    denoise_from_velocity,
    flow_time_grid,
    shifted_times,
    sigma_of_time,
    time_of_sigma,
)
from tests.helpers.flow_mixture import flow_mixture, path_marginal

F64 = torch.float64


def full_mixture(d: int = 3, seed: int = 0) -> GaussianMixturePrior:
    """Three components with random full covariances (one of them singular)."""
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(3, d, d, generator=g, dtype=F64)
    covs = L @ L.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    covs[2] = torch.outer(L[2, 0], L[2, 0])  # rank one
    return GaussianMixturePrior(torch.tensor([0.5, 0.3, 0.2], dtype=F64), 2 * torch.randn(3, d, generator=g, dtype=F64),
                                covs)


# ------------------------------------------------------------------ conversion identities


def test_time_and_sigma_are_inverse_and_the_path_divides_into_a_ve_point():
    t = torch.tensor([1e-4, 0.2, 0.5, 0.9, T_MAX], dtype=F64)
    sigma = sigma_of_time(t)
    assert torch.allclose(time_of_sigma(sigma), t, rtol=1e-14, atol=0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * eps
    assert torch.allclose(x_t / (1 - t)[:, None], x0 + sigma[:, None] * eps, rtol=1e-12, atol=1e-12)


def test_denoise_from_velocity_inverts_the_ve_velocity():
    # v = (x_t - D) / t from a VE denoiser, back through D = x_t - t v: D again.
    mixture = full_mixture()
    sigma = torch.tensor([0.01, 0.7, 5.0, 300.0], dtype=F64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * (1 + sigma[:, None])

    def v(x_t, t):
        return (x_t - mixture.denoise(x_t / (1 - t)[:, None], t / (1 - t))) / t[:, None]

    assert torch.allclose(denoise_from_velocity(v, x, sigma), mixture.denoise(x, sigma), rtol=1e-10, atol=1e-10)


def test_denoise_passes_the_flow_point_and_time_to_the_velocity():
    seen = {}

    def v(x_t, t):
        seen.update(x_t=x_t, t=t)
        return torch.ones_like(x_t)

    x, sigma = torch.full((2, 3), 6.0, dtype=F64), torch.tensor([1.0, 3.0], dtype=F64)
    out = from_velocity(v, data_shape=(3,)).denoise(x, sigma)
    assert torch.allclose(seen["t"], torch.tensor([0.5, 0.75], dtype=F64))
    assert torch.allclose(seen["x_t"], torch.tensor([[3.0] * 3, [1.5] * 3], dtype=F64))
    assert torch.allclose(out, torch.tensor([[2.5] * 3, [0.75] * 3], dtype=F64))  # x_t - t * 1
    from_velocity(v, data_shape=(3,)).denoise(x, torch.tensor(1.0, dtype=F64))  # a scalar sigma is expanded
    assert seen["t"].shape == (2,)


# ------------------------------------------------------------------ the scheduler's grid


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
@pytest.mark.parametrize("steps", [1, 4, 28, 50])
def test_flow_time_grid_is_the_schedulers_sigmas(shift, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    ours = flow_time_grid(steps, 1000, shift)
    assert ours.shape == scheduler.sigmas.shape and ours[-1] == 0
    assert torch.allclose(ours, scheduler.sigmas.to(F64), rtol=0, atol=1e-6)  # diffusers: float32
    assert torch.allclose(ours[:-1] * 1000, scheduler.timesteps.to(F64), rtol=1e-6, atol=1e-4)


def test_flow_time_grid_with_dynamic_shift_and_fluxs_own_base():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(12, mu=0.9)
    assert torch.allclose(flow_time_grid(12, mu=0.9), scheduler.sigmas.to(F64), atol=1e-6)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 12, 12), mu=0.9)  # FluxPipeline's base
    assert torch.allclose(flow_time_grid(12, mu=0.9, base_end=1 / 12), scheduler.sigmas.to(F64), atol=1e-6)
    # mu is the static shift e^mu
    t = torch.linspace(0.01, 1, 7, dtype=F64)
    assert torch.allclose(shifted_times(t, mu=0.9), shifted_times(t, shift=math.exp(0.9)), rtol=1e-14)


def test_velocity_prior_levels_are_the_schedulers_training_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    prior = from_velocity(lambda x_t, t: x_t, data_shape=(2,), shift=3.0, train_steps=100)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, shift=3.0)
    times = scheduler.sigmas.flip(0).to(F64)  # ascending training sigmas of the scheduler
    assert prior.sigmas.shape == (100,) and prior.sigmas.dtype == F64
    assert (prior.sigmas[1:] >= prior.sigmas[:-1]).all()
    below = times < T_MAX
    assert torch.allclose(time_of_sigma(prior.sigmas[below]), times[below], atol=1e-6)
    assert torch.allclose(prior.sigmas[~below], torch.tensor(sigma_of_time(T_MAX), dtype=F64))
    assert prior.t_min == pytest.approx(float(times[0]), abs=1e-7)
    assert prior.sigma_min == pytest.approx(sigma_of_time(prior.t_min)) and prior.sigma_max == pytest.approx(999.0)
    grid = prior.flow_times(5)
    assert grid[0] == T_MAX and grid[-1] == 0 and len(grid) == 6
    problem = Problem(torch.zeros(1, 2), None, prior, (1, 2), 0.0, 5, torch.Generator())
    assert problem.flow_times() == pytest.approx(grid)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, error, match", [
    ({"velocity": 3.0}, TypeError, "velocity must be callable"),
    ({"shift": 0.0}, ValueError, "shift must be positive"),
    ({"shift": -2.0}, ValueError, "shift must be positive"),
    ({"train_steps": 0}, ValueError, "train_steps must be >= 1"),
])
def test_from_velocity_refuses_bad_arguments(kwargs, error, match):
    arguments = {"velocity": lambda x_t, t: x_t, "data_shape": (2,), **kwargs}
    with pytest.raises(error, match=match):
        from_velocity(**arguments)


def test_velocity_prior_refuses_a_time_range_outside_zero_one():
    with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
        VelocityPrior(lambda x_t, t: x_t, t_max=1.0)
    with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
        VelocityPrior(lambda x_t, t: x_t, t_min=0.5, t_max=0.4)


def test_flow_time_grid_refuses_bad_counts():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow_time_grid(0)
    with pytest.raises(ValueError, match="train_steps must be >= 1"):
        flow_time_grid(3, train_steps=0)


# ------------------------------------------------------------------ the mixture's exact velocity


@pytest.mark.parametrize("kind", ["full", "diagonal", "isotropic"])
def test_mixture_velocity_equals_the_reparameterised_denoiser(kind):
    g = torch.Generator().manual_seed(2)
    if kind == "full":
        mixture = full_mixture()
    else:
        means = torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
        covs = torch.rand(4, 2, 3, 3, generator=g, dtype=F64) if kind == "diagonal" else 0.3
        mixture = GaussianMixturePrior(torch.rand(4, generator=g, dtype=F64) + 0.1, means, covs)
    t = torch.tensor([0.02, 0.25, 0.5, 0.8, 0.97, T_MAX], dtype=F64)
    x_t = torch.randn(6, *mixture.data_shape, generator=g, dtype=F64) * 2
    shape = (-1, *[1] * len(mixture.data_shape))
    reparam = (x_t - mixture.denoise(x_t / (1 - t).reshape(shape), t / (1 - t))) / t.reshape(shape)
    assert torch.allclose(mixture.velocity(x_t, t), reparam, rtol=1e-9, atol=1e-9)
    assert torch.allclose(mixture.velocity(x_t, 0.5), mixture.velocity(x_t, torch.full((6,), 0.5, dtype=F64)))


def test_mixture_velocity_is_the_score_of_the_path_density():
    # x_t = (1 - t) x0 + t eps: grad log p_t = -E[eps | x_t] / t and E[x0] = (x_t - t E[eps]) / (1 - t), so
    # v = E[eps] - E[x0] = -(x_t + t grad log p_t) / (1 - t).  log p_t by change of variables from the
    # VE density, p_t(x_t) = p_sigma(x_t / (1 - t)) / (1 - t)^d, differentiated by autograd.
    mixture = full_mixture()
    g = torch.Generator().manual_seed(3)
    for t in (0.1, 0.5, 0.9):
        x_t = (torch.randn(5, 3, generator=g, dtype=F64) * 2).requires_grad_(True)
        log_p = mixture.log_prob(x_t / (1 - t), t / (1 - t)) - 3 * math.log(1 - t)
        score = torch.autograd.grad(log_p.sum(), x_t)[0]
        expected = -(x_t.detach() + t * score) / (1 - t)
        assert torch.allclose(mixture.velocity(x_t.detach(), t), expected, rtol=1e-9, atol=1e-9)
        # and the closed-form path marginal has the same density
        assert torch.allclose(path_marginal(mixture, t).log_prob(x_t.detach()), log_p.detach(), rtol=1e-10)


def test_mixture_velocity_is_the_conditional_mean_of_eps_minus_x0_by_monte_carlo():
    # E[(eps - x0) - v(x_t)] f(x_t) = 0 for f = 1 and f = x_t (the defining property of E[. | x_t]);
    # a velocity off by 5% fails (the bound is 5 standard errors).
    mixture = full_mixture(d=2, seed=4)
    g = torch.Generator().manual_seed(5)
    n, t = 200_000, 0.6
    x0, eps = mixture.sample(n, generator=g), torch.randn(n, 2, generator=g, dtype=F64)
    x_t = (1 - t) * x0 + t * eps

    def z_scores(v):
        residual = (eps - x0) - v
        moments = torch.cat([residual, residual * x_t[:, :1], residual * x_t[:, 1:]], dim=1)
        return moments.mean(0) / (moments.std(0) / math.sqrt(n))

    exact = mixture.velocity(x_t, t)
    assert (z_scores(exact).abs() < 5).all()
    assert (z_scores(1.05 * exact).abs() > 5).any()


def test_flow_mixture_denoises_as_the_mixture():
    mixture = full_mixture()
    flow = flow_mixture(mixture, shift=2.0)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=F64) * 3
    sigma = torch.tensor([0.05, 1.0, 20.0, 900.0], dtype=F64)
    assert torch.allclose(flow.denoise(x, sigma), mixture.denoise(x, sigma), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ natural-64 as a velocity field


def test_natural_64_round_trips_through_its_velocity():
    prior = load_prior("natural-64")
    problem = Problem(torch.zeros(1, 3, 16, 16), None, prior, (2, 3, 16, 16), 0.0, 4, torch.Generator())
    g = torch.Generator().manual_seed(7)
    x_t = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v = velocity(problem, x_t, t)
        x0 = flow_denoise(problem, x_t, t)
        assert torch.allclose(x_t, (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * (v + x0), atol=1e-5)
        wrapped = from_velocity(lambda x, s: velocity(problem, x, s), data_shape=None)
        sigma = sigma_of_time(t)
        x = x_t / (1 - t)[:, None, None, None]
        torch.testing.assert_close(wrapped.denoise(x, sigma), prior.denoise(x, sigma), rtol=1e-4, atol=1e-4)
