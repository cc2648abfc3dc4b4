"""Existing methods on a flow prior (issue 23.4): the exact Gaussian mixture given only as its
velocity field, ``priors.from_velocity(mixture.velocity)`` (:mod:`tests.helpers.flow_mixture`).

* Parity: every method that runs on a pixel prior with a matrix operator gives, seed for seed,
  the samples of its run on the same mixture as a VE prior with the flow prior's levels
  (``ve_twin``: same ``sigma_min``, ``sigma_max`` and ``sigmas`` table, so every grid coincides and
  only the conversion ``x_t = x / (1 + sigma)``, ``D = x_t - t v`` differs: float64 rounding).
* Exact posteriors: DDRM, ΠGDM and DPS on the MCGdiff mixture problem, DDRM, ΠGDM and DAPS on a
  closed-form Gaussian posterior, with the bounds of their VE tests
  (``tests/methods/test_methods_svd.py``, ``tests/methods/test_daps.py``), now on the flow model's
  own levels.  Table methods (DDRM's ``range(0, T, T // steps)``, ΠGDM's) start at training step
  ``T - T // steps``: with ``shift = 1`` DDRM's 20-step grid starts at ``t = 0.95`` (``sigma = 19``),
  short of the mixture's means (``|mu| <= 45``), and misses seed 0 (ratio 0.39); the mixture problem
  uses SD3's ``shift = 3`` (start ``t = 0.983``, ``sigma = 57``).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks.matrix import OPERATOR_CAPABILITIES
from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs
from operators import MatrixOperator
from priors import GaussianPrior
from tests.helpers.flow_mixture import flow_mixture, make_flow_gmm_problem, ve_twin
from tests.helpers.gaussian_posterior import GAUSSIAN_CASES, gaussian_problem
from tests.helpers.posterior_problems import sliced_wasserstein

F64 = torch.float64
SHIFT = 3.0


def pixel_matrix_methods() -> list[str]:
    """Registered methods that run on a pixel prior with a matrix operator."""
    problem = make_flow_gmm_problem(2, 1, 0)
    caps = capabilities(problem.operator, problem.prior)
    return sorted(name for name, cls in registered().items() if not missing_needs(cls.needs, caps))


def test_the_four_named_methods_are_among_those_checked():
    assert {"dps", "daps", "ddrm", "pigdm"} <= set(pixel_matrix_methods())


#: Methods whose inner optimiser turns float rounding into different samples, so only their first
#: denoiser calls are compared (and the run stops there): D-Flow's per-row L-BFGS with a line search
#: (on the VE mixture alone, scaling the denoiser by 1 + 1e-14 moves its 10-step samples by up to 9.6
#: and its NFE from 8378 to 8353).
AMPLIFIES_ROUNDING = {"d_flow"}


class Enough(Exception):
    """Raised by :class:`FirstCalls` once it holds its calls, when told to stop there."""


class FirstCalls:
    """``prior`` unchanged, keeping its first ``keep`` denoiser calls ``(x, sigma, D)``; with ``stop``
    the next call raises :class:`Enough`."""

    def __init__(self, prior, keep: int = 3, stop: bool = False):
        self.prior, self.keep, self.stop, self.calls = prior, keep, stop, []

    def __getattr__(self, name):
        return getattr(self.prior, name)

    def denoise(self, x, sigma):
        if self.stop and len(self.calls) == self.keep:
            raise Enough
        out = self.prior.denoise(x, sigma)
        if len(self.calls) < self.keep:
            self.calls.append(tuple(part.detach().clone() for part in (x, sigma, out)))
        return out


def blind(method: str) -> bool:
    """A method that needs nothing of the operator restores the measurement itself (gen2res)."""
    return not any(need in OPERATOR_CAPABILITIES for alternatives in registered()[method].needs
                   for need in alternatives.split("|"))


def run_recorded(problem, prior: FirstCalls, method: str):
    """The method's result on ``prior`` (``None`` when the recorder stopped it); a blind method
    restores a noisy copy of the signal (identity operator)."""
    operator, y = problem.operator, problem.y
    if blind(method):
        d = problem.prior.data_shape[-1]
        operator = MatrixOperator(torch.eye(d, dtype=F64))
        y = 3.0 * torch.linspace(-1.0, 1.0, d, dtype=F64)[None]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no per-task defaults for a matrix operator
            return solve(y, operator, prior, method=method, steps=10, num_samples=4,
                         noise_sigma=problem.noise_sigma, seed=0, progress=False)
    except Enough:
        return None


@pytest.mark.parametrize("method", pixel_matrix_methods())
def test_method_on_the_velocity_field_matches_its_run_on_the_ve_mixture(method):
    problem = make_flow_gmm_problem(8, 4, 0, shift=SHIFT)
    stop = method in AMPLIFIES_ROUNDING
    priors = FirstCalls(problem.prior, stop=stop), FirstCalls(problem.ve_prior, stop=stop)
    runs = [run_recorded(problem, prior, method) for prior in priors]
    assert len(priors[0].calls) == len(priors[1].calls) > 0
    for flow_call, ve_call in zip(*(prior.calls for prior in priors)):
        for a, b in zip(flow_call, ve_call):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))
    if not stop:
        flow, ve = runs[0].samples, runs[1].samples
        assert torch.isfinite(flow).all() and flow.dtype == F64
        assert runs[0].nfe == runs[1].nfe
        torch.testing.assert_close(flow, ve, rtol=1e-9, atol=1e-9 * float(ve.abs().max()))


def test_the_parity_check_sees_a_shifted_level_table():
    # The same mixture on the levels of shift 1 instead of 3: DDRM's grid moves and the samples differ.
    problem = make_flow_gmm_problem(8, 4, 0, shift=SHIFT)
    other = ve_twin(problem.ve_prior, make_flow_gmm_problem(8, 4, 0, shift=1.0).prior)
    runs = [solve(problem.y, problem.operator, prior, method="ddrm", steps=10, num_samples=4,
                  noise_sigma=problem.noise_sigma, seed=0, progress=False).samples
            for prior in (problem.prior, other)]
    assert (runs[0] - runs[1]).abs().max() > 1e-3


# ------------------------------------------------------------------ exact mixture posterior

#: method -> (steps, noise_sigma, largest accepted SW / prior SW): the bounds of
#: test_methods_svd.GMM_CASES; DPS (approximate, no VE bound) gets DDRM's.  Measured on the
#: flow prior (shift 3), seeds 0 / 1: DDRM 0.071 / 0.028, ΠGDM 0.0084 / 0.0065, DPS 0.020 / 0.078.
FLOW_GMM_CASES = {"ddrm": (20, None, 0.2), "pigdm": (100, 1e-2, 0.05), "dps": (100, None, 0.2)}


@pytest.mark.parametrize("method", sorted(FLOW_GMM_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_mixture_posterior_is_matched_on_the_flow_prior(method, seed):
    steps, noise_sigma, tolerance = FLOW_GMM_CASES[method]
    problem = make_flow_gmm_problem(8, 4, seed, noise_sigma, shift=SHIFT)
    n = 500
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = solve(problem.y, problem.operator, problem.prior, method=method, steps=steps, num_samples=n,
                       noise_sigma=problem.noise_sigma, seed=seed, progress=False)
    g = torch.Generator().manual_seed(1000 + seed)
    exact = problem.posterior.sample(n, generator=g)
    sw = sliced_wasserstein(result.samples.reshape(n, -1), exact, generator=g)
    prior_sw = sliced_wasserstein(problem.ve_prior.sample(n, generator=g), exact, generator=g)
    assert sw < tolerance * prior_sw


# ------------------------------------------------------------------ Gaussian posterior


@pytest.mark.parametrize("method", ["ddrm", "pigdm"])
def test_gaussian_posterior_mean_and_covariance_on_the_flow_prior(method):
    # Measured (mean error, relative covariance error): DDRM 0.026, 0.35; ΠGDM 0.13, 0.13 (VE: 0.025, 0.43; 0.13, 0.15).
    noise_sigma, steps, mean_tol, cov_tol = GAUSSIAN_CASES[method]
    prior, op, y, mean, cov = gaussian_problem(noise_sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = solve(y, op, flow_mixture(prior), method=method, steps=steps, num_samples=2000,
                       noise_sigma=noise_sigma, seed=0, progress=False)
    x = result.samples.reshape(2000, -1)
    assert (x.mean(0) - mean).norm() < mean_tol
    assert (torch.cov(x.T) - cov).norm() < cov_tol * cov.norm()


def test_daps_gaussian_posterior_mean_and_spread_on_the_flow_prior():
    # test_daps.test_gaussian_posterior_mean_and_spread with the prior given as its velocity.  DAPS runs its
    # own sigma grid (100 .. 0.1), so the numbers are the VE test's (mean error 0.14, std ratios 1.04-1.06).
    g = torch.Generator().manual_seed(3)
    L = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    C = L @ L.T + 0.5 * torch.eye(4, dtype=F64)
    mu = torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    noise_sigma = 0.1
    y = (A @ (mu + torch.linalg.cholesky(C) @ torch.randn(4, generator=g, dtype=F64))
         + noise_sigma * torch.randn(2, generator=g, dtype=F64))[None]
    gain = C @ A.T @ torch.linalg.inv(A @ C @ A.T + noise_sigma**2 * torch.eye(2, dtype=F64))
    mean, cov = mu + gain @ (y[0] - A @ mu), C - gain @ A @ C
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = solve(y, MatrixOperator(A), flow_mixture(GaussianPrior(mu, C)), method="daps", num_samples=1000,
                       steps=50, noise_sigma=noise_sigma, seed=0, progress=False, tau=math.sqrt(2) * noise_sigma,
                       lr=2e-3)
    x = result.samples.reshape(1000, -1)
    assert (x.mean(0) - mean).norm() < 0.2
    ratio = x.std(0) / cov.diagonal().sqrt()
    assert ((ratio > 0.9) & (ratio < 1.2)).all(), ratio
