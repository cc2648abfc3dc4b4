"""Pieces shared by the latent-space methods: the decoded operator, the latent view of a
problem and a per-sample AdamW minimiser with early stopping."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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

    A row stops when its loss falls below ``tolerance`` or, with ``patience``, when its
    loss is higher than ``patience`` iterations earlier; stopped rows keep their value,
    so a batch of samples gives the same rows as solving each alone.  AdamW is elementwise,
    so the rows do not interact.
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
        active &= loss >= tolerance
        if patience is not None:
            history.append(loss)
            if len(history) > patience:
                active &= loss <= history.pop(0)
        if not active.any():
            break
        with torch.no_grad():
            m.mul_(betas[0]).add_((1 - betas[0]) * grad)
            s.mul_(betas[1]).add_((1 - betas[1]) * grad * grad)
            m_hat = m / (1 - betas[0] ** step)
            s_hat = s / (1 - betas[1] ** step)
            update = lr * (weight_decay * v + m_hat / (s_hat.sqrt() + eps))
            v = v - update * active.reshape(shape).to(v.dtype)
    return v.detach()
