"""The twisted diffusion sampler (TDS): sequential Monte Carlo with twisted DDPM proposals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.smc import (
    RESAMPLING,
    ParticleWeights,
    gather_particles,
    report_rows,
    resample_indices,
    show_ess,
    system_layout,
)
from invsolve.schedules import respaced_timesteps


@register
@dataclass
class TDS(Method):
    r"""Twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham, "Practical and
    asymptotically exact conditional sampling in diffusion models", NeurIPS 2023).

    Official code: blt2114/twisted_diffusion_sampler
    (``image_exp/image_diffusion/feynman_kac_image_ddpm.py``, ``TwistedDDPM``;
    ``smc_utils/feynman_kac_pf.py``, ``smc_FK``; ``image_exp/run_image.py``,
    ``base_sampler_conf.yml``).  ``P`` particles per system follow the DDPM chain from
    ``N(0, sigma_0^2 I)``.  At level ``sigma`` with ``x0 = D(x, sigma)`` the twist is

    .. math:: \tilde p_\sigma(y | x) = N\big(y;\ A(x_0),\ (\sigma_y^2 + r_\sigma^2) I\big),\quad
              r_\sigma^2 = \frac{\sigma^2 \tau^2}{\sigma^2 + \tau^2}

    (``pred_xstart_var_type = 6``, ``tausq = 0.12``).  The proposal is the DDPM posterior step
    (``eta = 1``) from ``x0_tw = x0 + sigma^2 grad_x log p~``, clamped to the data range
    (``clip_twisted``; ``x0`` itself is not clamped, ``clip_denoised`` defaults to ``False``
    because the twist's gradient flows through it).  The move ``x -> x'`` is weighted by

    .. math:: w = \frac{p(x' | x)\ \tilde p_{\sigma'}(y | x')}{\tilde p_\sigma(y | x)\ q(x' | x, y)};

    the first weight is ``p~_{sigma_0}(y | x)``, the last step takes ``x = D(x, sigma_last)``
    (``use_mean_pred``) with weight ``p(y | x) / p~_{sigma_last}(y | x)`` (skipped for
    ``sigma_y = 0``).  Systematic resampling whenever ``ESS < P``.  The product of mean weights
    estimates ``log p(y)`` (``Result.log_evidence``; the twists carry their normalising constants,
    which the official code drops as they cancel in the weights).  ``samples_per_system`` (default
    all ``P``, the official output is the particle set) rows share one system, further rows get
    further systems.  Defaults: 100 steps on the respaced grid (``timestep_respacing: '100'``;
    the EDM grid for priors without a table), ``P = 4``, ``tau^2 = 0.12``.

    Deviations from the official code:

    * the noisy twist ``sigma_y^2 + r^2`` extends the code's noiseless inpainting twist as in the
      paper;
    * the proposal variance is the DDPM posterior variance (the official ADM learns it).
    """

    name = "tds"
    needs = ("vjp", "pixel")
    default_steps = 100
    cost = "per system: P network calls, each with a backprop through the network and the operator (the twist's gradient), per step"
    summary = "TDS: twisted SMC with gradient-twisted DDPM proposals (asymptotically exact, log-evidence)"

    clip_denoised: bool | None = False
    particles: int = 4
    tau2: float = 0.12
    clip_twisted: bool = True
    samples_per_system: int | None = None
    resampling: str = "systematic"
    ess_threshold: float = 1.0
    batch_size: int | None = 64

    def __post_init__(self) -> None:
        per_system = self.particles if self.samples_per_system is None else self.samples_per_system
        if self.particles < 1 or not 1 <= per_system <= self.particles:
            raise ValueError(
                f"need particles >= 1 and 1 <= samples_per_system <= particles, got {self.particles}, "
                f"{self.samples_per_system}"
            )
        if not self.tau2 > 0:
            raise ValueError(f"tau2 must be > 0, got {self.tau2}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {self.ess_threshold}")
        if self.resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {', '.join(RESAMPLING)}, got {self.resampling!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def run(self, problem: Problem) -> Tensor:
        per_system = self.particles if self.samples_per_system is None else self.samples_per_system
        layout = system_layout(problem.y, per_system, problem.images)
        sigmas = problem.timestep_sigmas(respaced_timesteps)
        out = torch.empty(problem.x_shape, device=problem.y.device, dtype=problem.y.dtype)
        log_z = torch.empty(layout.num_systems, device=out.device, dtype=torch.float64)
        numel = math.prod(problem.x_shape[1:])
        ess = []
        for batch in layout.batches(self.particles, numel):
            x, weights = self._filter(problem, layout, batch, sigmas)
            log_z[batch] = weights.log_evidence
            ess.append(weights.ess_trace)
            chosen = gather_particles(x, resample_indices(weights.log_w, self.resampling, problem.generator, per_system))
            served = layout.rows_of(batch)
            out[served] = chosen[layout.system[served] - batch[0], layout.slot[served]]
        problem.diagnostics.update(log_evidence=layout.row_evidence(log_z), log_evidence_systems=log_z,
                                   ess=torch.tensor(ess, dtype=torch.float64).mean(0).tolist())
        return out

    def _twist(self, problem: Problem, x: Tensor, y: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, log p~(y | x), grad_x log p~)`` for particles ``x`` (flat rows), in chunks."""
        variance = problem.noise_sigma**2 + sigma**2 * self.tau2 / (sigma**2 + self.tau2)
        m = y[0].numel()
        parts = []
        size = x.shape[0] if self.batch_size is None else self.batch_size
        for xc, yc in zip(x.split(size), y.split(size)):
            with torch.enable_grad():
                xc = xc.detach().requires_grad_(True)
                x0 = problem.denoise(xc, sigma)
                misfit = (yc - problem.operator(x0)).flatten(1).pow(2).sum(1)
                log_twist = -0.5 * misfit / variance - 0.5 * m * math.log(2 * math.pi * variance)
                (grad,) = torch.autograd.grad(log_twist.sum(), xc)
            parts.append((x0.detach(), log_twist.detach().double(), grad))
        return tuple(torch.cat(p) for p in zip(*parts))

    def _filter(self, problem: Problem, layout, batch: Tensor, sigmas: list[float]):
        """Run the particle systems of ``batch``; returns the final particles ``(S, P, ...)`` and weights."""
        systems, P = len(batch), self.particles
        shape = (systems * P, *problem.x_shape[1:])
        y = layout.distinct[layout.measurement[batch]].to(problem.y)
        y = repeat(y, "s ... -> (s p) ...", p=P)
        data_range = getattr(problem.prior, "data_range", None)
        weights = ParticleWeights(systems, P, problem.y.device)
        served = layout.rows_of(batch)
        where = (layout.system[served] - batch[0], layout.slot[served])
        complete = len(served) == problem.x_shape[0]

        x = sigmas[0] * problem.randn(shape)
        proposal_gap = torch.zeros(systems, P, device=x.device, dtype=torch.float64)
        previous = torch.zeros_like(proposal_gap)
        bar = problem.iterate(range(len(sigmas) - 1), self.name)
        for j in bar:
            sigma, sigma_next = sigmas[j], sigmas[j + 1]
            x0, log_twist, grad = self._twist(problem, x, y, sigma)
            log_twist = log_twist.reshape(systems, P)
            weights.reweight(proposal_gap + log_twist - previous)
            show_ess(bar, problem, weights)
            index = weights.resample(self.resampling, self.ess_threshold, problem.generator)
            x, x0, grad = (
                rearrange(gather_particles(rearrange(t, "(s p) ... -> s p ...", p=P), index), "s p ... -> (s p) ...")
                for t in (x, x0, grad)
            )
            previous = gather_particles(log_twist, index)
            if sigma_next == 0:
                x = x0
                if problem.noise_sigma > 0:
                    misfit = (y - problem.operator(x)).flatten(1).pow(2).sum(1).double().reshape(systems, P)
                    m = y[0].numel()
                    log_lik = -0.5 * misfit / problem.noise_sigma**2 - 0.5 * m * math.log(2 * math.pi * problem.noise_sigma**2)
                    weights.reweight(log_lik - previous)
            else:
                twisted = x0 + sigma**2 * grad
                if self.clip_twisted and data_range is not None:
                    twisted = twisted.clamp(*data_range)
                keep, spread = sigma_next**2 / sigma**2, sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2)
                mean, mean_twisted = x0 + keep * (x - x0), twisted + keep * (x - twisted)
                x = mean_twisted + spread * problem.randn(shape)
                gap = (x - mean_twisted).double().pow(2) - (x - mean).double().pow(2)
                proposal_gap = (gap.flatten(1).sum(1) / (2 * spread**2)).reshape(systems, P)
            view = (rearrange(t, "(s p) ... -> s p ...", p=P)[where] for t in (x, x0))
            report_rows(problem, j, sigma, *view, complete)
        return rearrange(x, "(s p) ... -> s p ...", p=P), weights
