"""The exact Gaussian mixture as a flow prior, for flow-method and flow-prior tests.

Along ``x_t = (1 - t) x0 + t eps`` a mixture ``sum_k w_k N(mu_k, C_k)`` stays a mixture,
``sum_k w_k N((1 - t) mu_k, (1 - t)^2 C_k + t^2 I)`` (:func:`path_marginal`), and its velocity
``E[eps - x0 | x_t]`` is closed form (:meth:`priors.GaussianMixturePrior.velocity`).
:func:`flow_mixture` hands that velocity to :func:`priors.from_velocity`: the exact mixture as a
flow prior.  :func:`ve_twin` is the same mixture as a VE prior on the flow prior's levels
(``sigma_min``, ``sigma_max``, the ``sigmas`` table, the ``flow_times`` grid), so a method runs the
same grid on both and only the flow/VE conversion differs.  :func:`make_flow_gmm_problem` is the MCGdiff mixture problem
(:func:`invsolve.benchmarks.gmm_problem.make_gmm_problem`) with both priors; its exact posterior is
again a mixture, whose path marginals and velocity come from the same two functions.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor

from invsolve.benchmarks.gmm_problem import make_gmm_problem
from operators import MatrixOperator
from priors import GaussianMixturePrior, VelocityPrior, from_velocity


def flow_mixture(mixture: GaussianMixturePrior, shift: float = 1.0, train_steps: int = 1000) -> VelocityPrior:
    """``mixture`` as a flow prior: its exact velocity through :func:`priors.from_velocity` (unbounded data)."""
    return from_velocity(mixture.velocity, data_shape=mixture.data_shape, shift=shift, train_steps=train_steps,
                         data_range=None)


def ve_twin(mixture: GaussianMixturePrior, flow: VelocityPrior) -> GaussianMixturePrior:
    """``mixture`` as a VE prior with ``flow``'s ``sigma_min``, ``sigma_max``, ``sigmas`` table and
    ``flow_times`` grid (what flow methods read through ``Problem.flow_times``)."""
    twin = copy.copy(mixture)
    twin.alphas_cumprod = None
    twin.sigma_min, twin.sigma_max, twin.sigmas = flow.sigma_min, flow.sigma_max, flow.sigmas.clone()
    twin.flow_times = flow.flow_times
    return twin


def path_marginal(mixture: GaussianMixturePrior, t: float) -> GaussianMixturePrior:
    """The law of ``x_t = (1 - t) x0 + t eps``: weights ``w_k``, means ``(1 - t) mu_k``, covariances
    ``(1 - t)^2 C_k + t^2 I`` (same eigenvectors, eigenvalues ``(1 - t)^2 lambda + t^2``)."""
    lam = (1 - t) ** 2 * mixture.eigvals + t**2
    if mixture.eigvecs is None:
        covs: Tensor = lam.reshape(mixture.means.shape)
    else:
        covs = mixture.eigvecs @ torch.diag_embed(lam) @ mixture.eigvecs.transpose(1, 2)
    return GaussianMixturePrior(mixture.weights, (1 - t) * mixture.means, covs)


class FlowGMMProblem(NamedTuple):
    """The MCGdiff mixture problem with the prior as a flow prior (``prior``) and as its VE twin."""

    prior: VelocityPrior
    operator: MatrixOperator
    y: Tensor
    noise_sigma: float
    posterior: GaussianMixturePrior
    ve_prior: GaussianMixturePrior


def make_flow_gmm_problem(
    d: int = 8, d_y: int = 4, seed: int = 0, noise_sigma: float | None = None, shift: float = 1.0
) -> FlowGMMProblem:
    """:func:`~invsolve.benchmarks.gmm_problem.make_gmm_problem` (same draws) on the exact flow prior."""
    base = make_gmm_problem(d, d_y, seed, noise_sigma)
    flow = flow_mixture(base.prior, shift)
    return FlowGMMProblem(flow, base.operator, base.y, base.noise_sigma, base.posterior, ve_twin(base.prior, flow))
