"""Wrappers keep a flow prior's own grid: ``Problem.flow_times`` reads ``prior.flow_times`` through
``ClippedPrior`` (which ``solve()`` puts around the prior when a method clamps), ``Tiled`` and the
counting / checking wrappers, and a non-flow prior keeps the uniform grid."""

import torch

from invsolve.contracts import checked
from invsolve.counting import counting
from invsolve.samplers import Problem
from priors import ClippedPrior, GaussianMixturePrior, Tiled
from priors.flow import flow_time_grid, from_velocity


def _problem(prior) -> Problem:
    y = torch.zeros(1, 1, 8, 8)
    return Problem(y=y, operator=None, prior=prior, x_shape=(1, 1, 8, 8), noise_sigma=0.0, steps=5,
                   generator=torch.Generator())


def test_wrapped_flow_prior_keeps_its_shifted_grid():
    prior = from_velocity(lambda x, t: x, data_shape=(1, 8, 8), shift=3.0)
    expected = flow_time_grid(5, 1000, 3.0).clamp(max=prior.t_max).tolist()
    for wrapped in (prior, ClippedPrior(prior), counting(checked(ClippedPrior(prior))), Tiled(prior)):
        assert _problem(wrapped).flow_times() == expected


def test_a_wrapped_non_flow_prior_gets_the_uniform_grid():
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 4), 1.0, sigma_max=9.0)
    grid = _problem(ClippedPrior(prior)).flow_times()
    assert grid == torch.linspace(0.9, 0.0, 6, dtype=torch.float64).tolist()
