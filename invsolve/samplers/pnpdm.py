"""Plug-and-play diffusion models (PnP-DM): a split-Gibbs chain with a diffusion prior step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.smc import in_chunks, report_rows, system_layout
from invsolve.samplers.updates import misfit_gradient, spectral_measurement
from invsolve.schedules import karras_sigmas


@register
@dataclass
class PnPDM(Method):
    r"""Plug-and-play diffusion models, PnP-DM (Wu, Sun, Chen, Zhang, Yue & Bouman, "Principled
    probabilistic imaging using diffusion models as plug-and-play priors", NeurIPS 2024).

    Official code: zihuiwu/PnP-DM-public (``pnpdm/samplers/pnp_edm/pnp_edm.py``,
    ``denoiser_edm.py``, ``commands.sh``).  Split Gibbs sampling of
    ``pi(x, z) ∝ p(x) N(z; x, rho^2 I) p(y | z)``, alternating

    1. likelihood step ``z ~ exp(-||y - A z||^2 / (2 sigma_y^2) - ||z - x||^2 / (2 rho^2))``:
       exact in the SVD basis (precision ``s^2 / sigma_y^2 + 1 / rho^2``, the code's
       ``proximal_generator``); for linear operators without an SVD by perturb-and-MAP,
       ``z = prox(x + rho e1, y + sigma_y e2)`` with weight ``sigma_y^2 / rho^2`` (``sigma_y = 0``
       projects ``x + rho e1`` onto ``A z = y``); otherwise ``langevin_steps`` Langevin steps of
       size ``langevin_step`` from ``z = x`` (the code's phase-retrieval sampler, ``gamma = 1e-4``,
       100 steps; needs ``sigma_y > 0``);
    2. prior step ``x ~ p(x | z)``: Euler steps of the EDM reverse SDE from ``z`` over the levels
       ``< rho`` of the EDM grid (``diffusion_steps`` 100, sigma 80 → 0.002, ``rho_edm`` 7: mode
       ``edm_sde``), ``x' = x + 2 (sigma' - sigma) (x - D(x, sigma)) / sigma
       + sqrt(2 sigma (sigma - sigma')) eps`` (no noise on the last step); ``sde = False`` runs
       the probability-flow ODE.

    ``rho_k = max(rho0 decay^k, rho_min)`` with the authors' linear-task commands: ``rho0`` 10,
    decay 0.9, ``rho_min`` 0.3.  The chain runs ``steps`` iterations (``num_iters`` 100) from
    ``A^+ y`` (zeros without an SVD) and keeps ``samples_per_chain`` iterates after the burn-in
    (``num_burn_in_iters`` 40 of 100, ``num_samples_per_run`` 20: iterations
    ``linspace(40, 99, 21).astype(int)[1:]``).  Rows of one measurement (and image) share chains,
    up to ``samples_per_chain`` per chain, the latest iterate first; chains follow the rows of
    ``y`` (:func:`~invsolve.samplers.smc.system_layout`), so a batch with one seed per image
    equals its images solved alone.  With ``rho_min > 0`` the chain's ``x`` targets
    ``p(x) N(y; A x, sigma_y^2 + rho_min^2 A A^T)``, a posterior with inflated noise.
    """

    name = "pnpdm"
    needs = ("svd|prox|vjp", "pixel")
    default_steps = 100
    cost = "per iteration: 1 network call per EDM level below rho_k (the prior step's inner SDE) and 1 likelihood step (an SVD apply, an operator prox, or langevin_steps operator gradients); no backprop"
    summary = "PnP-DM: split-Gibbs chain (exact likelihood step, diffusion prior step), samples along the chain"

    rho0: float = 10.0
    rho_decay: float = 0.9
    rho_min: float = 0.3
    burn_in: float = 0.4
    samples_per_chain: int = 20
    diffusion_steps: int = 100
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho_edm: float = 7.0
    sde: bool = True
    langevin_step: float = 1e-4
    langevin_steps: int = 100
    batch_size: int | None = 64

    def __post_init__(self) -> None:
        if not self.rho0 > 0 or not 0 < self.rho_decay <= 1 or self.rho_min < 0:
            raise ValueError(f"need rho0 > 0, 0 < rho_decay <= 1, rho_min >= 0; got {self.rho0}, {self.rho_decay}, {self.rho_min}")
        if not 0 <= self.burn_in < 1 or self.samples_per_chain < 1:
            raise ValueError(f"need 0 <= burn_in < 1 and samples_per_chain >= 1, got {self.burn_in}, {self.samples_per_chain}")
        if self.diffusion_steps < 1 or not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("need diffusion_steps >= 1 and 0 < sigma_min < sigma_max")
        if not self.langevin_step > 0 or self.langevin_steps < 1:
            raise ValueError("need langevin_step > 0 and langevin_steps >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def kept_iterations(self, iterations: int) -> list[int]:
        """The iterations whose ``x`` is kept, ascending (``pnp_edm.py``: ``iters_count_as_sample``):
        ``samples_per_chain`` of them, fewer when a short chain has fewer iterations after burn-in."""
        first = int(round(self.burn_in * iterations))
        count = max(1, min(self.samples_per_chain, iterations - 1 - first))
        return np.linspace(first, iterations - 1, count + 1).astype(int)[1:].tolist()

    def rho(self, k: int) -> float:
        return max(self.rho0 * self.rho_decay**k, self.rho_min)

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        kept = self.kept_iterations(problem.steps)
        layout = system_layout(problem.y, len(kept), problem.images)
        y = layout.distinct[layout.measurement].to(problem.y)
        grid = karras_sigmas(self.diffusion_steps, max(self.sigma_min, problem.prior.sigma_min),
                             min(self.sigma_max, problem.prior.sigma_max), self.rho_edm).tolist()
        likelihood = self._likelihood_sampler(problem, layout)
        x = self._start(problem, y)
        samples = []
        where = (layout.system, len(kept) - 1 - layout.slot)
        bar = problem.iterate(range(problem.steps), self.name)
        for k in bar:
            rho = self.rho(k)
            z = likelihood(x, y, rho)
            x, denoised = self._prior_step(problem, z, rho, grid)
            if k in kept:
                samples.append(x)
            if problem.progress:
                bar.set_postfix(rho=f"{rho:.3g}", refresh=False)
            report_rows(problem, k, rho, x[layout.system], denoised[layout.system], True)
        return torch.stack(samples, 1)[where]

    def _start(self, problem: Problem, y: Tensor) -> Tensor:
        shape = (y.shape[0], *problem.x_shape[1:])
        if "svd" in getattr(problem.operator, "capabilities", ()):
            return problem.operator.pinv(y).reshape(shape)
        return torch.zeros(shape, device=y.device, dtype=y.dtype)

    def _prior_step(self, problem: Problem, z: Tensor, rho: float, grid: list[float]) -> tuple[Tensor, Tensor]:
        """Euler steps of the EDM reverse SDE (or ODE) from ``z`` over the grid levels below ``rho``."""
        start = next(i for i, sigma in enumerate(grid) if sigma < rho)
        x, denoised = z, z
        for i in range(start, len(grid) - 1):
            sigma, sigma_next = grid[i], grid[i + 1]
            denoised = in_chunks(lambda chunk: problem.denoise(chunk, sigma), x, self.batch_size)
            scale = 2.0 if self.sde else 1.0
            x = x + scale * (sigma_next - sigma) * (x - denoised) / sigma
            if self.sde and i != len(grid) - 2:
                x = x + math.sqrt(2 * sigma * (sigma - sigma_next)) * problem.randn(tuple(x.shape))
        return x, denoised

    def _likelihood_sampler(self, problem: Problem, layout):
        """``(x, y, rho) -> z``: the exact (SVD or perturb-and-MAP) or Langevin likelihood step."""
        op, sigma_y = problem.operator, problem.noise_sigma
        caps = getattr(op, "capabilities", ())
        svd = op.svd(problem.x_shape) if "svd" in caps else None
        if svd is not None:
            s, ybar = spectral_measurement(svd, problem.y, problem.x_shape)
            s, ybar = s[layout.representative], ybar[layout.representative]

            def spectral(x: Tensor, y: Tensor, rho: float) -> Tensor:
                xbar = svd.Vt(x)
                noise = problem.randn(tuple(xbar.shape))
                if sigma_y == 0:
                    zbar = torch.where(s > 0, ybar, xbar + rho * noise)
                else:
                    precision = s**2 / sigma_y**2 + 1 / rho**2
                    zbar = (s**2 * ybar / sigma_y**2 + xbar / rho**2) / precision + noise / precision.sqrt()
                return svd.V(zbar).reshape(x.shape)

            return spectral
        if "prox" in caps:

            def perturb_and_map(x: Tensor, y: Tensor, rho: float) -> Tensor:
                shifted = x + rho * problem.randn(tuple(x.shape))
                if sigma_y == 0:
                    return shifted + op.pinv(y - op(shifted))
                noisy = y + sigma_y * problem.randn(tuple(y.shape))
                return op.prox(shifted, noisy, sigma_y**2 / rho**2)

            return perturb_and_map
        if sigma_y <= 0:
            raise ValueError("pnpdm's Langevin likelihood step (operators without prox or SVD) needs noise_sigma > 0")

        def langevin(x: Tensor, y: Tensor, rho: float) -> Tensor:
            z, gamma = x, self.langevin_step
            for _ in range(self.langevin_steps):
                drift = misfit_gradient(op, z, y) / sigma_y**2 + (z - x) / rho**2
                z = z - gamma * drift + math.sqrt(2 * gamma) * problem.randn(tuple(z.shape))
            return z

        return langevin
