"""Monte Carlo guided diffusion (MCGdiff): a particle filter for linear inverse problems with an SVD."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.smc import (
    RESAMPLING,
    ParticleWeights,
    gather_particles,
    in_chunks,
    report_rows,
    resample_indices,
    show_ess,
    system_layout,
)
from invsolve.samplers.updates import spectral_measurement


def linspace_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``torch.linspace(0, T - 1, steps).long()``, descending: the grid of the MCGdiff image script
    (gabrielvc/mcg_diff ``scripts/hugging_faces_models.py``, 100 steps: t = 999, 988, …, 10, 0)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie between 1 and the prior's {num_timesteps} training timesteps, got {steps}")
    return sorted(set(torch.linspace(0, num_timesteps - 1, steps).long().tolist()), reverse=True)


def log_normal(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Elementwise ``log N(x; mean, var)`` in float64."""
    x, mean, var = x.double(), mean.double(), var.double()
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


@register
@dataclass
class MCGdiff(Method):
    r"""Monte Carlo guided diffusion (Cardoso, Janati, Le Corff & Moulines, "Monte Carlo guided
    diffusion for Bayesian linear inverse problems", ICLR 2024).

    Official code: gabrielvc/mcg_diff (``mcg_diff/particle_filter.py``, ``scripts/configs``,
    ``mcg_diff/default.yaml``).  In the spectral coordinates ``xbar = V^T x`` of
    ``A = U diag(s) V^T`` the measurement ``ybar_i = (U^T y)_i / s_i = xbar0_i + sigma_i eps``
    (``sigma_i = sigma_y / s_i``) looks like the diffusion state at level ``sigma_i``.  The grid
    gets a level at each distinct ``sigma_i`` (when there are at most as many as grid levels)
    and each observed coordinate is tied to ``tau_i``, the largest level ``<= sigma_i``; it
    carries, at every level ``sigma >= sigma_{tau_i}``, the potential

    .. math:: g_\sigma^i(x) = N(x_i;\ \bar y_i,\ v_i(\sigma)),\quad
              v_i(\sigma) = |\sigma^2 - \sigma_i^2| + \kappa (1 + \sigma_i^2),

    which at ``tau_i`` is the exact likelihood ``p(ybar_i | x_tau)``.  ``P`` particles per
    system move ``sigma -> sigma'`` by the DDIM step (mean ``m``, variance ``c^2``, ``eta = 1``):

    * weights (resampling every step): ``prod_i N(ybar_i; m_i, c^2 + v_i(sigma')) /
      N(xbar_i; ybar_i, v_i(sigma))`` over the coordinates active at ``sigma'`` (the denominator
      over those active at both levels);
    * move: active coordinates from ``N(m_i, c^2) g_{sigma'}^i`` (gain ``c^2 / (c^2 + v')``), the
      others from ``N(m_i, c^2)``.

    The start is drawn exactly from ``N(0, sigma_0^2) g_{sigma_0}``, and the weight products give
    the SMC estimate of ``log p(y)`` (``Result.log_evidence``; mapped from ``ybar`` to ``y`` by
    ``- sum log s_i`` and the ``N(0, sigma_y^2)`` terms of unmatched measurement coordinates).
    Defaults: 100 DDIM steps (``eta = 1``) on ``torch.linspace(0, T - 1, 100).long()`` (the EDM
    grid for priors without a table), ``P = 64``, ``kappa = 1e-4`` (``gaussian_var``),
    multinomial resampling, one draw per system (``samples_per_system = 1``, as the official
    script runs ``N_total`` filters and keeps one particle of each).  ``batch_size`` chunks the
    network calls; systems run in memory-bounded groups (:mod:`invsolve.samplers.smc`).

    Deviations from the official code (each fixes a bias, see the notes):

    * the potential at ``tau_i`` is the exact likelihood and no final weight is needed; the
      official noisy case pins ``x_tau`` to ``ybar`` and ends with the weight
      ``p(y | x_0) / g_tau``, which counts the likelihood twice;
    * ``tau_i`` is the largest level ``<= sigma_i`` and ``v_i`` uses ``sigma_i``; the official
      ``tau_i`` is the nearest grid level and ``sigma_tau`` replaces ``sigma_i`` in ``v_i`` (its GMM
      script adapts the grid to the singular values instead);
    * the start includes the factor ``g_T`` (the official start is ``N(0, I)`` with uniform
      weights, which leaves no evidence estimate);
    * noiseless: no final weights (the official ``1 / g_0`` undoes the last potential; its draws
      are then nearly uniform over particles, as here).
    """

    name = "mcgdiff"
    needs = ("svd", "pixel")
    default_steps = 100
    cost = "per system: P network calls (one per particle) and 2 SVD applies (V^T, V) per step; no backprop"
    summary = "MCGdiff: particle filter in the operator's spectral basis (asymptotically exact, log-evidence)"

    particles: int = 64
    gaussian_var: float = 1e-4
    eta: float = 1.0
    samples_per_system: int = 1
    resampling: str = "multinomial"
    ess_threshold: float = 1.0
    batch_size: int | None = 64

    def __post_init__(self) -> None:
        if self.particles < 1 or not 1 <= self.samples_per_system <= self.particles:
            raise ValueError(
                f"need particles >= 1 and 1 <= samples_per_system <= particles, got {self.particles}, "
                f"{self.samples_per_system}"
            )
        if not self.gaussian_var > 0:
            raise ValueError(f"gaussian_var (kappa) must be > 0, got {self.gaussian_var}")
        if not 0 <= self.eta <= 1 or not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"eta and ess_threshold must lie in [0, 1], got {self.eta}, {self.ess_threshold}")
        if self.resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {', '.join(RESAMPLING)}, got {self.resampling!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        svd = problem.operator.svd(problem.x_shape)
        if svd is None:
            raise ValueError(f"{type(problem.operator).__name__} returned no SVD; mcgdiff needs one")
        if svd.singular_values.ndim == 2 and svd.singular_values.shape[0] > 1:
            raise ValueError("mcgdiff needs one operator for the whole batch; solve images with different masks separately")
        s, ybar = spectral_measurement(svd, problem.y, problem.x_shape)
        observed = s > 0
        obs_std = problem.noise_sigma / torch.where(observed, s, torch.ones_like(s)).double()
        levels = with_observation_levels(problem.timestep_sigmas(linspace_timesteps), obs_std[observed])
        levels = levels.to(s.device)
        tau = torch.where(observed, (levels[None, None, :] > obs_std[..., None]).sum(-1), -1)
        layout = system_layout(problem.y, self.samples_per_system, problem.images)
        out = torch.empty(problem.x_shape, device=s.device, dtype=s.dtype)
        log_z = torch.empty(layout.num_systems, device=s.device, dtype=torch.float64)
        ess = []
        for batch in layout.batches(self.particles, s.shape[1]):
            rows = layout.representative[batch]
            spectral = (ybar[rows], obs_std[rows], tau[rows], observed[rows])
            xbar, weights = self._filter(problem, svd, spectral, levels, layout, batch)
            log_z[batch] = weights.log_evidence
            ess.append(weights.ess_trace)
            chosen = gather_particles(xbar, resample_indices(weights.log_w, self.resampling, problem.generator,
                                                              self.samples_per_system))
            served = layout.rows_of(batch)
            out[served] = svd.V(chosen[layout.system[served] - batch[0], layout.slot[served]]).to(out)
        log_z += measurement_jacobian(svd, problem.y, s, problem.noise_sigma)[layout.representative]
        problem.diagnostics.update(log_evidence=layout.row_evidence(log_z), log_evidence_systems=log_z,
                                   ess=torch.tensor(ess, dtype=torch.float64).mean(0).tolist())
        return out

    def _filter(self, problem: Problem, svd, spectral, levels: Tensor, layout, batch: Tensor):
        """Run the particle systems of ``batch``; returns final ``xbar`` ``(S, P, n)`` and the weights."""
        ybar, obs_std, tau, observed = (t[:, None] for t in spectral)
        systems, n, P = len(batch), ybar.shape[-1], self.particles
        kappa = self.gaussian_var * (1 + obs_std**2)

        def variance(sigma: float) -> Tensor:
            """``v_i(sigma) = |sigma^2 - sigma_i^2| + kappa (1 + sigma_i^2)``."""
            return (sigma**2 - obs_std**2).abs() + kappa

        weights = ParticleWeights(systems, P, ybar.device)

        sigma0 = float(levels[0])
        v0 = variance(sigma0)
        gain = sigma0**2 / (sigma0**2 + v0)
        z = problem.randn((systems, P, n))
        start = gain * ybar + (gain * v0).sqrt() * z
        xbar = torch.where(observed, start.to(z), sigma0 * z)
        weights.add_evidence(torch.where(observed, log_normal(ybar, torch.zeros_like(ybar), sigma0**2 + v0), 0.0)
                             .sum((-1, -2)))

        served = layout.rows_of(batch)
        where = (layout.system[served] - batch[0], layout.slot[served] % P)
        complete = len(served) == problem.x_shape[0]
        shape = (systems * P, *problem.x_shape[1:])
        x = svd.V(xbar.reshape(systems * P, n)).reshape(shape)
        bar = problem.iterate(range(len(levels) - 1), self.name)
        for j in bar:
            sigma, sigma_next = float(levels[j]), float(levels[j + 1])
            denoised = in_chunks(lambda chunk: problem.denoise(chunk, sigma), x, self.batch_size)
            x0bar = rearrange(svd.Vt(denoised), "(s p) n -> s p n", p=P)
            c = self.eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))
            mean = x0bar + math.sqrt(max(0.0, sigma_next**2 - c**2)) * (xbar - x0bar) / sigma
            active, active_next = observed & (j <= tau), observed & (j + 1 <= tau)
            v, v_next = variance(sigma), variance(sigma_next)
            predictive = torch.where(active_next, log_normal(ybar, mean, c**2 + v_next), 0.0)
            previous = torch.where(active & active_next, log_normal(xbar, ybar, v), 0.0)
            weights.reweight((predictive - previous).sum(-1))
            show_ess(bar, problem, weights)
            mean = gather_particles(mean, weights.resample(self.resampling, self.ess_threshold, problem.generator))
            gain = c**2 / (c**2 + v_next)
            z = problem.randn((systems, P, n))
            guided = mean + gain * (ybar - mean) + (c**2 * (1 - gain)).sqrt() * z
            xbar = torch.where(active_next, guided.to(z), mean + c * z)
            x = svd.V(xbar.reshape(systems * P, n)).reshape(shape)
            view = (rearrange(t, "(s p) ... -> s p ...", p=P)[where] for t in (x, denoised))
            report_rows(problem, j, sigma, *view, complete)
        return xbar, weights


def with_observation_levels(sigmas: list[float], obs_std: Tensor) -> Tensor:
    """The descending grid ``sigmas`` with a level at each distinct observation noise
    ``sigma_i`` inside ``(0, sigma_0)``, when there are at most ``len(sigmas)`` of them (so an
    observed coordinate is pinned exactly where its measurement lives; otherwise ``tau_i`` is
    the largest level below ``sigma_i``)."""
    grid = torch.tensor(sigmas, dtype=torch.float64)
    extra = torch.unique(obs_std.double().cpu())
    extra = extra[(extra > 0) & (extra < grid[0])]
    if 0 < len(extra) <= len(sigmas):
        grid = torch.unique(torch.cat([grid, extra])).flip(0)
    return grid


def measurement_jacobian(svd, y: Tensor, s: Tensor, noise_sigma: float) -> Tensor:
    r"""Per row, ``log p(y) - log p(ybar)``: ``- sum_i log s_i`` over the observed coordinates
    plus ``sum_j log N((U^T y)_j; 0, sigma_y^2)`` over measurement coordinates with no
    singular value (pure noise; dropped when ``sigma_y = 0``)."""
    log_s = torch.where(s > 0, s, torch.ones_like(s)).double().log().sum(-1)
    u = svd.Ut(y).double()
    unmatched = torch.ones_like(u, dtype=torch.bool)
    k = min(u.shape[1], s.shape[1])
    unmatched[:, :k] = ~(s[:, :k] > 0)
    noise = 0.0
    if noise_sigma > 0:
        noise = torch.where(unmatched, log_normal(u, torch.zeros_like(u), torch.full_like(u, noise_sigma**2)), 0.0)
        noise = noise.sum(-1)
    return noise - log_s
