"""Synthetic inverse problems whose posterior is known exactly, and a distance to check samples.

One source of truth: the Gaussian-mixture problem of Cardoso et al., "Monte Carlo
guided diffusion for Bayesian linear inverse problems" (MCGdiff, ICLR 2024), and the
sliced Wasserstein distance live in :mod:`invsolve.benchmarks`, where the posterior
benchmark uses them too.  ``make_gmm_problem(d, d_y, seed, noise_sigma=None)`` returns
``(prior, operator, y, noise_sigma, posterior)``.
"""

from invsolve.benchmarks.gmm_problem import make_gmm_problem
from invsolve.benchmarks.sliced_wasserstein import sliced_wasserstein

__all__ = ["make_gmm_problem", "sliced_wasserstein"]
