"""Noise-level grids for samplers (variance-exploding sigma)."""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The EDM grid (Karras et al., NeurIPS 2022, eq. 5), descending.

    ``sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0 .. steps-1``, followed by a final 0 when ``append_zero``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=dtype) if steps > 1 else torch.zeros(1, dtype=dtype)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if append_zero else sigmas


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` DDPM timesteps evenly spread over ``0 .. T-1``, both ends included, descending.

    The rule of guided-diffusion's ``space_timesteps(T, [steps])`` (Nichol & Dhariwal,
    ICML 2021), which DPS and MCG run with ``timestep_respacing`` (all ``T`` timesteps
    by default): ``round(i (T - 1) / (steps - 1))`` for ``i = 0 .. steps-1``.
    """
    _check_spacing(num_timesteps, steps)
    if steps == 1:
        return [0]
    stride = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)}, reverse=True)


def strided_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``range(0, T, T // steps)``, descending: ``T - T // steps, ..., T // steps, 0`` for ``T % steps = 0``.

    The grid of DDRM (``runners/diffusion.py``: ``skip = T // timesteps``, t = 950, 900, …, 0
    for 20 steps), DDNM (t = 990, 980, …, 0 for 100) and NVlabs/RED-diff's ΠGDM and
    RED-Diff (``utils/functions.py``: ``range(end_step, start_step, skip)``).  When
    ``steps`` does not divide ``T`` the grid has ``ceil(T / (T // steps))`` levels, as there.
    """
    _check_spacing(num_timesteps, steps)
    return list(range(0, num_timesteps, num_timesteps // steps))[::-1]


def _check_spacing(num_timesteps: int, steps: int) -> None:
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"steps must lie between 1 and the prior's {num_timesteps} training timesteps, got {steps}"
        )


def table_grid(table: Tensor, timesteps: list[int]) -> list[float]:
    """The sigmas ``table[t]`` of descending integer ``timesteps``, followed by a final 0.

    ``table`` is a discrete prior's ascending sigma per training timestep
    (``sigma_t = sqrt((1 - abar_t) / abar_t)``); the final 0 is the clean end
    (``abar_{-1} = 1``) that the last DDPM / DDIM step of the official codes reaches.
    """
    return [float(table[t]) for t in timesteps] + [0.0]
