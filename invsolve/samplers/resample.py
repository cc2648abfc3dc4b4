"""ReSample: hard data consistency in the latent space of a latent diffusion model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.latent import (
    latent_problem,
    ldm_ddim_levels,
    minimize_rows,
    network_epsilon,
    row_mse,
    vp_scale,
)


def resampling_fusion(
    z0_y: Tensor, z_prior: Tensor, sigma: float, sigma_next: float, gamma: float
) -> tuple[Tensor, float]:
    r"""Mean and standard deviation of ReSample's stochastic resampling at level ``s = sigma_next``.

    ``z_t ~ N(z0_y, s^2 I)`` (the measurement-consistent estimate re-noised) is fused with the
    unconditional proposal ``z'`` read as ``N(z_t, tau^2 I)``, where ``tau^2`` is ``gamma``
    times the DDPM posterior variance of the step ``sigma -> s``,
    ``tau^2 = gamma s^2 (sigma^2 - s^2) / sigma^2`` (VE form of ``stochastic_resample`` with
    ``sigma = 40 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)``):
    mean ``(tau^2 z0_y + s^2 z') / (tau^2 + s^2)``, variance ``tau^2 s^2 / (tau^2 + s^2)``.
    """
    tau2 = gamma * sigma_next**2 * max(0.0, 1 - sigma_next**2 / sigma**2)
    s2 = sigma_next**2
    if tau2 == 0:
        return z_prior, 0.0
    mean = (tau2 * z0_y + s2 * z_prior) / (tau2 + s2)
    return mean, math.sqrt(tau2 * s2 / (tau2 + s2))


def pseudo_x0(z: Tensor, eps: Tensor, sigma: float) -> Tensor:
    """ReSample's ``pseudo_x0 = (x - (1 - abar) eps) / sqrt(abar)`` (``p_sample_ddim``) in VE form,
    ``z - sigma^2 / sqrt(1 + sigma^2) eps``: not Tweedie's ``z - sigma eps`` (the code squares
    ``sqrt_one_minus_at``)."""
    return z - sigma**2 * vp_scale(sigma) * eps


@register
@dataclass
class ReSample(Method):
    r"""ReSample (Song, Kwon, Zhang, Hu, Qu & Shen, "Solving Inverse Problems with Latent Diffusion
    Models via Hard Data Consistency", ICLR 2024).

    Official code: soominkwon/resample (``sample_condition.py``: 500 DDIM steps, eta 0;
    ``ldm/models/diffusion/ddim.py``: ``resample_sampling``; ``ldm_inverse/condition_methods.py``).
    Grid: CompVis' DDIM timesteps ``range(0, T, T // steps) + 1``, the last step reaching
    timestep 0 (:func:`~invsolve.samplers.latent.ldm_ddim_levels`).  Step ``i`` (``sigma -> sigma'``,
    ``eps`` the network's output, ``abar = 1 / (1 + sigma^2)``):

    1. DDIM ``z' = (z - sigma eps) + sigma' eps`` and a DPS correction through the decoder ``G``,
       ``z' -= 0.5 abar sqrt((1+sigma^2)(1+sigma'^2)) grad_z ||y - A G(p)||`` (``scale = a_t * .5``)
       at ReSample's pseudo-x0 ``p = z - sigma^2 / sqrt(1 + sigma^2) eps`` (:func:`pseudo_x0`);
    2. hard data consistency when ``index = steps - 1 - i`` satisfies
       ``0 < index <= steps - steps // 3`` and ``index % interval == 0``:

       a. ``lookahead_steps`` further DDIM steps from ``z'``, ending with a pseudo-x0 ``p``
          (look-ahead step ``k`` asks the network at the timestep of level ``k + 1`` with the
          alphas of level ``k``, as the code does);
       b. ``index >= steps // 3``: pixel space, ``x = argmin ||y - A x||^2`` from ``G(p)`` (AdamW
          lr 1e-2, <= 2000 iterations, stop at MSE < 1e-6), ``z0_y = E(x)``; later: latent space,
          ``z0_y = argmin ||y - A G(z)||^2`` from ``p`` (AdamW lr 5e-3, <= 500 iterations, stop at
          MSE < 1e-6 or when the loss exceeds that of 200 iterations earlier);
       c. stochastic resampling to ``sigma'`` (:func:`resampling_fusion`, ``gamma = 40``).

    After the last step a final latent optimisation from the VP state, decoded.  AdamW keeps
    PyTorch's weight decay 0.01, as the code does; start ``sqrt(1 + sigma_T^2) z`` (VP ``N(0, I)``).

    Deviations from the official code:

    * optimisation, norms and stopping are per sample (the code's batch is one image);
    * ``steps`` must not exceed the table's length; when ``T // steps = 1`` the alphas are read
      one timestep lower (PSLD's fix; ReSample's code would index past the table).
    """

    name = "resample"
    needs = ("vjp", "latent")
    default_steps = 500
    cost = (
        "1 network call, 1 decoder pass and 1 backprop through decoder and network per step; per consistency "
        "step also lookahead_steps network calls, then up to 2000 pixel-space optimiser iterations (operator "
        "and its gradient) and 1 encoder pass, or later up to 500 latent-space ones (decoder, operator and a "
        "backprop through both)"
    )
    summary = "ReSample: latent DPS plus hard data consistency and stochastic resampling"

    dps_step_size: float = 0.5
    interval: int = 10
    lookahead_steps: int = 5
    splits: int = 3
    gamma: float = 40.0
    pixel_lr: float = 1e-2
    pixel_max_iters: int = 2000
    pixel_tolerance: float = 1e-6
    latent_lr: float = 5e-3
    latent_max_iters: int = 500
    latent_tolerance: float = 1e-6
    latent_patience: int = 200
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.interval < 1 or self.lookahead_steps < 1 or self.splits < 1:
            raise ValueError("interval, lookahead_steps and splits must be >= 1")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def _guided_step(
        self, problem: Problem, latent: Problem, z: Tensor, levels: tuple[float, float, float]
    ) -> tuple[Tensor, Tensor]:
        """DDIM step plus the DPS correction at ReSample's pseudo-x0; returns ``z'`` and ``D``."""
        sigma, sigma_next, sigma_net = levels
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            eps = network_epsilon(latent, z, sigma, sigma_net)
            decoded = problem.prior.decode(pseudo_x0(z, eps, sigma))
            norms = (problem.y - problem.operator(decoded)).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(norms.sum(), z)
        eps = eps.detach()
        denoised = z.detach() - sigma * eps
        scale = self.dps_step_size * vp_scale(sigma) / vp_scale(sigma_next)
        return denoised + sigma_next * eps - scale * grad, denoised

    def _lookahead(self, latent: Problem, z: Tensor, i: int, levels: list[float], net: list[float]) -> Tensor:
        """ReSample's look-ahead from ``z`` (at ``levels[i + 1]``): its last pseudo-x0."""
        steps = len(net)
        z = z * (vp_scale(levels[i + 1]) / vp_scale(levels[i]))  # the code's alphas of level i
        for k in range(i, min(i + self.lookahead_steps, steps - 1)):
            eps = network_epsilon(latent, z, levels[k], net[k + 1])
            estimate = pseudo_x0(z, eps, levels[k])
            z = z - levels[k] * eps + levels[k + 1] * eps
        return estimate

    def _consistent_z0(self, problem: Problem, z0: Tensor, pixel_stage: bool) -> Tensor:
        prior, operator, y = problem.prior, problem.operator, problem.y
        if pixel_stage:
            x = minimize_rows(
                lambda x: row_mse(y - operator(x)),
                prior.decode(z0),
                self.pixel_lr,
                self.pixel_max_iters,
                self.pixel_tolerance,
                self.weight_decay,
            )
            return prior.encode(x)
        return self._latent_optimization(problem, z0)

    def _latent_optimization(self, problem: Problem, z0: Tensor) -> Tensor:
        prior, operator, y = problem.prior, problem.operator, problem.y
        return minimize_rows(
            lambda z: row_mse(y - operator(prior.decode(z))),
            z0,
            self.latent_lr,
            self.latent_max_iters,
            self.latent_tolerance,
            self.weight_decay,
            self.latent_patience,
        )

    def run(self, problem: Problem) -> Tensor:
        latent = latent_problem(problem)
        levels, net = ldm_ddim_levels(latent)
        steps = len(net)
        split = steps // self.splits
        z = latent.randn() / vp_scale(levels[0])
        for i in latent.iterate(range(steps), self.name):
            sigma, sigma_next = levels[i], levels[i + 1]
            z_next, denoised = self._guided_step(problem, latent, z, (sigma, sigma_next, net[i]))
            index = steps - 1 - i
            with torch.no_grad():
                if 0 < index <= steps - split and index % self.interval == 0:
                    estimate = self._lookahead(latent, z_next, i, levels, net)
                    z0_y = self._consistent_z0(problem, estimate, pixel_stage=index >= split)
                    mean, std = resampling_fusion(z0_y, z_next, sigma, sigma_next, self.gamma)
                    z_next = mean + std * latent.randn()
            z = z_next
            latent.report(i, sigma, z, denoised)
        with torch.no_grad():
            final = self._latent_optimization(problem, z * vp_scale(levels[-1]))
            return problem.prior.decode(final)
