"""Update rules shared by several samplers, in the VE convention ``x = x0 + sigma * eps``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    """VE DDIM step from ``sigma`` to ``sigma_next`` (Song et al., ICLR 2021).

    ``c = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)``,
    ``x' = x0 + sqrt(sigma'^2 - c^2) * eps + c * z``; ``eta = 1`` is the ancestral
    (DDPM-like) step, ``eta = 0`` the deterministic probability-flow step.
    """
    if sigma_next <= 0:
        return x0
    c = eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))
    x = x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * eps
    if c > 0:
        x = x + c * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return x
