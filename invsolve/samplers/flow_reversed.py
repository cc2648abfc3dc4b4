"""The network as the PnP-Flow repository calls it: time ``t = 0`` is noise, ``t = 1`` data.

PnP-Flow, OT-ODE, D-Flow and Flow Priors (github ``annegnx/PnP-Flow``) follow
``x_t = t x1 + (1 - t) x0`` with ``x1`` the data, ``x0 ~ N(0, I)`` and a network
``v(x, t) ~ x1 - x0``.  That is invsolve's path (:mod:`invsolve.samplers.flow_path`) at
time ``s = 1 - t`` with the velocity negated:

.. math::
    v_{\\text{paper}}(x, t) = -v(x, 1 - t), \\qquad
    x + (1 - t)\\, v_{\\text{paper}}(x, t) = E[x_1 \\mid x_t = x].

The VE contract has no infinite noise level, so the network is evaluated at
``s = 1 - t`` clamped to ``[t_min, t_max]``, the flow times of the prior's ``sigma_min``
and ``sigma_max`` (a flow prior: its own range; the paper's ``t = 0`` start is
``s = t_max``, 0.999 for :func:`priors.from_velocity`).  The methods keep their papers'
grids and formulas in the paper's time; only these two functions convert.
"""

from __future__ import annotations

from torch import Tensor

from invsolve.samplers.base import Problem
from invsolve.samplers.flow_path import clamped_time, velocity


def network_time(problem: Problem, t: float) -> float:
    """invsolve's flow time ``1 - t`` of paper time ``t``, clamped to the prior's range."""
    return clamped_time(problem, 1.0 - float(t))


def paper_velocity(problem: Problem, x: Tensor, t: float) -> Tensor:
    """The paper's ``v(x, t) ~ x1 - x0`` at paper time ``t`` (scalar), from any prior."""
    return -velocity(problem, x, network_time(problem, t))
