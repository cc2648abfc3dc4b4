"""Flow-matching coordinates on the VE denoiser contract.

The rectified-flow path of diffusers' ``FlowMatchEulerDiscreteScheduler`` is
``x_t = (1 - t) x0 + t eps`` with ``t`` in [0, 1] (``t = 1`` is noise) and a network
``v(x_t, t) ~ eps - x0``.  Dividing by ``1 - t`` gives the VE point
``x = x0 + sigma eps`` with ``sigma = t / (1 - t)``, so for any prior

.. math::
    \\hat x_0(x_t, t) = D\\!\\left(\\frac{x_t}{1 - t}, \\frac{t}{1 - t}\\right), \\qquad
    v(x_t, t) = \\frac{x_t - \\hat x_0(x_t, t)}{t}.

Flow methods call these helpers and :meth:`invsolve.samplers.Problem.flow_times`; they
never ask which family the prior is.  Papers whose time runs the other way (``t = 0``
is noise: PnP-Flow, OT-ODE, Flower) use ``1 - t`` in their own grid code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invsolve.samplers.base import Problem
from priors.flow import sigma_of_time, time_of_sigma

#: ``sigma_of(t) = t / (1 - t)`` and ``time_of(sigma) = sigma / (1 + sigma)``: the one conversion, in priors.
sigma_of, time_of = sigma_of_time, time_of_sigma


def _rows(t: float | Tensor, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def flow_denoise(problem: Problem, x_t: Tensor, t: float | Tensor) -> Tensor:
    """``E[x0 | x_t]`` on the flow path at time ``t`` (scalar or per row, ``t < 1``)."""
    t = _rows(t, x_t)
    scale = (1.0 - t).view(-1, *([1] * (x_t.ndim - 1)))
    return problem.denoise(x_t / scale, sigma_of(t))


def velocity(problem: Problem, x_t: Tensor, t: float | Tensor) -> Tensor:
    """The flow velocity ``v = (x_t - E[x0 | x_t]) / t`` (``~ eps - x0``), ``0 < t < 1``."""
    rows = _rows(t, x_t).view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - flow_denoise(problem, x_t, t)) / rows


def clamped_time(problem: Problem, t: float) -> float:
    """Flow time ``t`` clamped to the prior's range ``[time_of(sigma_min), time_of(sigma_max)]``:
    the VE contract has no level at ``t = 1`` (pure noise), where flow papers start."""
    low, high = float(time_of(problem.prior.sigma_min)), float(time_of(problem.prior.sigma_max))
    return min(max(float(t), low), high)
