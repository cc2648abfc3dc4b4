"""Flow-matching priors on the VE denoiser contract.

A rectified-flow model (diffusers' ``FlowMatchEulerDiscreteScheduler``, SD3, FLUX, the
OT-CFM UNets of the flow-solver papers) follows the path ``x_t = (1 - t) x0 + t eps``,
``t`` in [0, 1] with ``t = 1`` pure noise, and predicts ``v(x_t, t) ~ eps - x0``.
Dividing by ``1 - t`` gives the VE point ``x0 + sigma eps``, so

.. math::
    \\sigma = \\frac{t}{1 - t}, \\qquad x_t = \\frac{x}{1 + \\sigma}, \\qquad
    D(x, \\sigma) = x_t - t\\, v(x_t, t).

This module holds that conversion once (:func:`denoise_from_velocity`), the scheduler's
shifted time grid (:func:`shifted_times`, :func:`flow_time_grid`) and
:func:`from_velocity`, which turns a user's velocity field into a prior every method
accepts.  Methods never see the velocity: flow methods rebuild it from ``D``
(:mod:`invsolve.samplers.flow_path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from priors.base import Prior

Velocity = Callable[[Tensor, Tensor], Tensor]

#: the largest flow time a VE prior reaches by default: ``sigma_max = 999`` (the noise end, ``t = 1``,
#: has an infinite VE noise level).
T_MAX = 0.999


def sigma_of_time(t: float | Tensor) -> float | Tensor:
    """VE noise level ``t / (1 - t)`` of flow time ``t``."""
    return t / (1.0 - t)


def time_of_sigma(sigma: float | Tensor) -> float | Tensor:
    """Flow time ``sigma / (1 + sigma)`` of VE noise level ``sigma``."""
    return sigma / (1.0 + sigma)


def shifted_times(t: Tensor, shift: float = 1.0, mu: float | None = None) -> Tensor:
    """The scheduler's time shift (Esser et al. 2024, SD3, eq. 23).

    Static: ``shift t / (1 + (shift - 1) t)``.  Dynamic (FLUX's resolution-dependent
    ``mu``, diffusers ``time_shift`` with exponent 1): ``e^mu / (e^mu + 1 / t - 1)``, which
    is the static shift with ``shift = e^mu``.
    """
    s = math.exp(mu) if mu is not None else float(shift)
    return s * t / (1.0 + (s - 1.0) * t)


def flow_time_grid(
    steps: int,
    train_steps: int = 1000,
    shift: float = 1.0,
    mu: float | None = None,
    base_end: float | None = None,
) -> Tensor:
    """``steps + 1`` descending flow times ending at 0, as diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps(steps)`` builds them (float64).

    ``steps`` base times evenly spaced from 1 to ``base_end``, shifted, then a final 0.
    The scheduler spaces them between its training sigmas' ends, which it has already
    shifted once, so with a static ``shift`` the default ``base_end`` is
    ``shifted(1 / train_steps)`` and that end is shifted twice (as in SD3 pipelines,
    which call ``set_timesteps(steps)``); with dynamic shifting (``mu``) the training
    sigmas are unshifted and ``base_end = 1 / train_steps``.  FLUX pipelines pass their own
    base ``linspace(1, 1 / steps, steps)``: ``base_end = 1 / steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if train_steps < 1:
        raise ValueError(f"train_steps must be >= 1, got {train_steps}")
    if base_end is None:
        first = torch.tensor(1.0 / train_steps, dtype=torch.float64)
        base_end = float(first if mu is not None else shifted_times(first, shift))
    base = torch.linspace(1.0, float(base_end), steps, dtype=torch.float64)
    return torch.cat([shifted_times(base, shift, mu), base.new_zeros(1)])


def denoise_from_velocity(velocity: Velocity, x: Tensor, sigma: Tensor) -> Tensor:
    """``D(x, sigma) = x_t - t v(x_t, t)`` with ``t = sigma / (1 + sigma)``, ``x_t = x / (1 + sigma)``.

    ``sigma`` has shape ``(N,)`` (a scalar is expanded); ``velocity`` gets ``x_t`` and
    ``t`` of shape ``(N,)`` in ``x``'s dtype.
    """
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
    t = time_of_sigma(sigma)
    shape = (-1, *([1] * (x.ndim - 1)))
    x_t = x / (1.0 + sigma).reshape(shape)
    return x_t - t.reshape(shape) * velocity(x_t, t)


class VelocityPrior(Prior):
    """A prior from a velocity field ``v(x_t, t) ~ eps - x0`` on ``x_t = (1 - t) x0 + t eps``.

    ``sigma_min`` / ``sigma_max`` are the VE levels of ``t_min`` / ``t_max`` (``t_min``
    defaults to the scheduler's smallest training time, ``shifted(1 / T)``); ``sigmas`` is
    the ascending float64 VE table of the ``T = train_steps`` shifted training times
    ``shifted(k / T)``, ``k = 1 .. T`` (the scheduler's training sigmas), capped at
    ``t_max`` since ``t = 1`` has no finite VE level, so table-grid methods pick the flow
    model's own levels; ``flow_times(steps)`` is the scheduler's inference grid
    (:func:`flow_time_grid`) capped at ``t_max``.
    """

    def __init__(
        self,
        velocity: Velocity,
        data_shape: tuple[int, ...] | None = None,
        shift: float = 1.0,
        train_steps: int = 1000,
        t_min: float | None = None,
        t_max: float = T_MAX,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        if not callable(velocity):
            raise TypeError(f"velocity must be callable as v(x_t, t), got {type(velocity).__name__}")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        if int(train_steps) < 1:
            raise ValueError(f"train_steps must be >= 1, got {train_steps}")
        t_min = float(shifted_times(torch.tensor(1.0 / train_steps, dtype=torch.float64), shift)) if t_min is None else float(t_min)
        if not 0.0 < t_min < t_max < 1.0:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self.velocity = velocity
        self.data_shape = None if data_shape is None else tuple(int(n) for n in data_shape)
        self.shift, self.train_steps = float(shift), int(train_steps)
        self.t_min, self.t_max = t_min, float(t_max)
        self.sigma_min, self.sigma_max = float(sigma_of_time(t_min)), float(sigma_of_time(self.t_max))
        self.data_range = data_range
        times = shifted_times(torch.arange(1, self.train_steps + 1, dtype=torch.float64) / self.train_steps, shift)
        self.sigmas = sigma_of_time(times.clamp(max=self.t_max))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return denoise_from_velocity(self.velocity, x, sigma)

    def flow_times(self, steps: int) -> list[float]:
        """The scheduler's ``steps + 1`` descending times, capped at ``t_max``, ending at 0."""
        return flow_time_grid(steps, self.train_steps, self.shift).clamp(max=self.t_max).tolist()


def from_velocity(
    velocity: Velocity,
    data_shape: tuple[int, ...] | None = None,
    shift: float = 1.0,
    train_steps: int = 1000,
    data_range: tuple[float, float] | None = (-1.0, 1.0),
) -> VelocityPrior:
    """A prior every method accepts from ``velocity(x_t, t)``, ``t`` in (0, 1] per row
    (``t = 1`` noise), predicting ``eps - x0`` on ``x_t = (1 - t) x0 + t eps``."""
    return VelocityPrior(velocity, data_shape, shift=shift, train_steps=train_steps, data_range=data_range)
