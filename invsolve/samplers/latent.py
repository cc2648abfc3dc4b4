"""Pieces shared by the latent-space methods: the decoded operator, the latent view of a
problem, LDM's DDIM grid, the network's epsilon at a chosen timestep and a per-sample AdamW
minimiser with early stopping."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from invsolve.samplers.base import Problem


class DecodedOperator:
    """``z -> A(Dec(z))``: a pixel-space operator seen from the latent space (differentiable)."""

    def __init__(self, operator: Any, prior: Any):
        self.operator = operator
        self.prior = prior

    def __call__(self, z: Tensor) -> Tensor:
        return self.operator(self.prior.decode(z))


def latent_problem(problem: Problem) -> Problem:
    """The same problem with latents as the unknown: ``x_shape`` becomes the prior's latent
    shape and the operator :class:`DecodedOperator`, so pixel-method pieces (noise, sigma
    grids, residual gradients) apply to latents unchanged."""
    return dataclasses.replace(
        problem,
        operator=DecodedOperator(problem.operator, problem.prior),
        x_shape=tuple(problem.prior.latent_shape(problem.x_shape)),
    )


def ldm_ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The network timesteps of CompVis' DDIM sampler, descending: ``range(0, T, T // steps) + 1``
    (``make_ddim_timesteps("uniform")`` in ``ldm/modules/diffusionmodules/util.py``), so
    ``T - T // steps + 1, ..., 1``; for ``T // steps = 1`` they reach ``T``."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie between 1 and the prior's {num_timesteps} training timesteps, got {steps}")
    return [t + 1 for t in range(0, num_timesteps, num_timesteps // steps)][::-1]


def ldm_ddim_levels(problem: Problem) -> tuple[list[float], list[float]]:
    """``(levels, network_levels)`` of CompVis' DDIM sampler on the prior's table.

    Step ``i`` moves the state from ``levels[i]`` to ``levels[i + 1]`` while the network
    is asked at ``network_levels[i]``.  ``levels`` holds the sigma of each step's
    ``alpha`` (``ddim_alphas``) and ends with ``alphas_prev[0] = abar_0``: the last step
    reaches timestep 0, not the clean image.  When the timesteps reach ``T``
    (``T // steps = 1``) the alphas are read one timestep lower, as PSLD's
    ``make_ddim_sampling_parameters`` does ("subtract 1 ... to avoid index error"), while
    the network still gets ``t``, clamped here to the table's last level.  A prior
    without a table gets its EDM grid (ending at 0) for both.
    """
    table = problem.sigma_table
    if table is None:
        grid = problem.sigmas()
        return grid, grid[:-1]
    T = len(table)
    timesteps = ldm_ddim_timesteps(T, problem.steps)
    alpha_timesteps = [t - 1 for t in timesteps] if timesteps[0] == T else timesteps
    levels = [float(table[t]) for t in alpha_timesteps] + [float(table[0])]
    return levels, [float(table[min(t, T - 1)]) for t in timesteps]


def vp_scale(sigma: float) -> float:
    """``sqrt(abar) = 1 / sqrt(1 + sigma^2)``: VE state times this is the VP state of DDPM codes."""
    return 1 / math.sqrt(1 + sigma**2)


def network_epsilon(problem: Problem, z: Tensor, sigma: float, sigma_net: float) -> Tensor:
    """The network's epsilon for the VP state of ``z`` (a VE state at level ``sigma``), asked at
    the timestep of level ``sigma_net``: the prior's denoiser at ``sigma_net`` on
    ``z sqrt((1 + sigma_net^2) / (1 + sigma^2))``, whose VP state is the same; ``epsilon =
    (x - D(x, sigma_net)) / sigma_net``.  With ``sigma_net = sigma`` it is ``(z - D(z, sigma)) / sigma``."""
    x = z if sigma_net == sigma else z * (vp_scale(sigma) / vp_scale(sigma_net))
    return (x - problem.denoise(x, sigma_net)) / sigma_net


def row_mse(residual: Tensor) -> Tensor:
    """Mean squared value of each row of a batch, shape ``(N,)``."""
    return residual.flatten(1).pow(2).mean(dim=1)


def minimize_rows(
    loss_rows: Callable[[Tensor], Tensor],
    init: Tensor,
    lr: float,
    max_iters: int,
    tolerance: float,
    weight_decay: float,
    patience: int | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Tensor:
    """Minimise ``loss_rows(v)`` (one loss per batch row) from ``init`` with AdamW
    (Loshchilov & Hutter, ICLR 2019), each row on its own.

    Each iteration evaluates the loss, takes the step, then stops a row whose loss (before
    the step) fell below ``tolerance`` or, with ``patience``, exceeds the loss of ``patience``
    iterations earlier: the order of ReSample's ``pixel_optimization`` and
    ``latent_optimization`` loops (soominkwon/resample ``ldm/models/diffusion/ddim.py``),
    which ``break`` after the step.  Stopped rows keep their value, so a batch of samples
    gives the same rows as solving each alone; AdamW is elementwise, so rows do not interact.
    """
    v = init.detach().clone()
    m = torch.zeros_like(v)
    s = torch.zeros_like(v)
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    history: list[Tensor] = []
    shape = (-1,) + (1,) * (v.ndim - 1)
    for step in range(1, max_iters + 1):
        with torch.enable_grad():
            leaf = v.requires_grad_(True)
            loss = loss_rows(leaf)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        v = v.detach()
        loss = loss.detach()
        with torch.no_grad():
            m.mul_(betas[0]).add_((1 - betas[0]) * grad)
            s.mul_(betas[1]).add_((1 - betas[1]) * grad * grad)
            m_hat = m / (1 - betas[0] ** step)
            s_hat = s / (1 - betas[1] ** step)
            update = lr * (weight_decay * v + m_hat / (s_hat.sqrt() + eps))
            v = v - update * active.reshape(shape).to(v.dtype)
        active &= loss >= tolerance
        if patience is not None:
            history.append(loss)
            if len(history) > patience:
                active &= loss <= history.pop(0)
        if not active.any():
            break
    return v.detach()
