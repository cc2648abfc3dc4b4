"""FlowDPS: flow-driven posterior sampling in the latent space of a latent flow model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.flow_path import sigma_of, time_of, velocity
from invsolve.samplers.latent import latent_problem
from priors.flow import flow_time_grid

_SOLVE = "FlowDPS-Inverse/FlowDPS solve.py (--step_size 15), sd3_sampler.py"
RESIDUALS = ("adjoint", "pinv")


def flowdps_times(problem: Problem, steps: int, shift: float | None) -> list[float]:
    """The official grid: SD3's scheduler ``set_timesteps(steps)`` after ``config.shift = shift``,
    i.e. ``steps`` times evenly spaced from 1 to the prior's smallest time, shifted by ``shift``,
    then 0, each capped at the prior's largest time.  ``shift=None``: the prior's own grid
    (:meth:`~invsolve.samplers.Problem.flow_times`)."""
    if shift is None:
        return problem.flow_times(steps)
    low, high = float(time_of(problem.prior.sigma_min)), float(time_of(problem.prior.sigma_max))
    return flow_time_grid(steps, shift=shift, base_end=low).clamp(max=high).tolist()


def consistency_direction(problem: Problem, x: Tensor, residual: str) -> Tensor:
    r"""``grad_x`` of the per-row ``||M (y - A x)||`` with ``M = A^T`` or ``A^+`` (linear ``A``).

    ``M = A^T``: ``A^T A u / ||u||``, ``u = A^T (A x - y)``; ``M = A^+``: ``u / ||u||`` with
    ``u = A^+ (A x - y)`` (in the range of ``A^T``, where ``A^+ A`` is the identity)."""
    op = problem.operator
    r = op(x) - problem.y
    u = op.adjoint(r) if residual == "adjoint" else op.pinv(r)
    norm = u.flatten(1).norm(dim=1).clamp_min(torch.finfo(u.dtype).tiny).view(-1, *([1] * (u.ndim - 1)))
    if residual == "pinv":
        return u / norm
    problem.fused_operator_calls += u.shape[0]
    return op.normal(u) / norm


@register
@dataclass
class FlowDPS(Method):
    r"""FlowDPS (Kim, Kim & Ye, "FlowDPS: Flow-Driven Posterior Sampling for Inverse
    Problems", ICCV 2025), for latent flow priors (Stable Diffusion 3).

    Official code: github.com/FlowDPS-Inverse/FlowDPS, ``sd3_sampler.py`` (``SD3FlowDPS``)
    with the defaults of ``solve.py``.  Its time is invsolve's (``t = 1`` noise).  Per step
    ``t -> t'`` with ``v = v(z, t)``, decoder ``G``:

    .. math::
        \hat z_0 = z - t v, \qquad \hat z_1 = z + (1 - t) v, \\
        z_0 \leftarrow z_0 - \zeta \nabla_{z_0} \lVert M y - M A G(z_0) \rVert
            \quad (3\ \text{times from } \hat z_0), \qquad
        \bar z_0 = (1 - t) \hat z_0 + t z_0, \\
        z \leftarrow (1 - t') \bar z_0 + t' (\sqrt{t'} \hat z_1 + \sqrt{1 - t'}\, \epsilon),

    from ``z ~ N(0, I)``, returning ``G(z)``; ``M = A^+`` for super-resolution (the code's
    ``"sr" in task``) and ``A^T`` otherwise (``residual``, :attr:`task_defaults`).
    Defaults: 28 steps (``--NFE 28``), ``zeta = 15`` (``--step_size 15``; the sampler's own
    default of 30 is overridden), 3 gradient steps, the scheduler's shift set to 4.0 before
    ``set_timesteps`` (:func:`flowdps_times`; its base grid ends at the prior's smallest time,
    as diffusers' does).  Classifier-free guidance (``--cfg_scale 2``) belongs to the prior.

    Deviations:

    * the norm is per row (the official norm spans the batch; the same for its batch size 1),
      and the gradient is formed in closed form for the linear ``A`` then pulled back through
      the decoder (the official autograd gives the same), in the working dtype (the official
      casts it to float16);
    * ``noise_sigma`` does not enter the update (the official script measures with noise 0.03
      and never reads it).

    Cost per step: 1 NFE and ``dc_steps`` (3) decoder passes with their VJPs, each with
    ``A``, ``A^T`` or ``A^+`` and ``A^T A``.
    """

    name = "flowdps"
    needs = ("adjoint", "latent")
    default_steps = 28
    summary = "FlowDPS: latent flow posterior sampling, gradient steps on the clean latent and stochastic re-noising"
    cost = "1 NFE and dc_steps (3) decoder passes with VJPs per step"
    task_defaults = MappingProxyType(
        {
            "super_resolution": Defaults({"residual": "pinv"}, _SOLVE + " (sr_avgpool, sr_bicubic: A_pinv)"),
            "gaussian_blur": Defaults({"residual": "adjoint"}, _SOLVE + " (deblur_gauss: At)"),
            "motion_blur": Defaults({"residual": "adjoint"}, _SOLVE + " (deblur_motion: At)"),
        }
    )

    step_size: float = 15.0
    dc_steps: int = 3
    shift: float | None = 4.0
    residual: str = "adjoint"

    def resolved(self, problem: Problem) -> FlowDPS:
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        if self.residual == "pinv" and "pinv" not in problem.operator.capabilities:
            raise ValueError("residual='pinv' needs an operator with a pseudo-inverse")
        if self.shift is not None and not self.shift > 0:
            raise ValueError(f"shift must be positive or None, got {self.shift}")
        if self.dc_steps < 0:
            raise ValueError(f"dc_steps must be >= 0, got {self.dc_steps}")
        return self

    def _consistency(self, problem: Problem, z0: Tensor) -> Tensor:
        decode = problem.prior.decode
        for _ in range(self.dc_steps):
            with torch.enable_grad():
                z = z0.detach().requires_grad_(True)
                x = decode(z)
                direction = consistency_direction(problem, x.detach(), self.residual)
                (grad,) = torch.autograd.grad(x, z, grad_outputs=direction)
            z0 = z0 - self.step_size * grad
        return z0

    def run(self, problem: Problem) -> Tensor:
        latent = latent_problem(problem)
        times = flowdps_times(latent, problem.steps, self.shift)
        z = latent.randn()
        for i in latent.iterate(range(len(times) - 1), problem.method):
            t, t_next = times[i], times[i + 1]
            with torch.no_grad():
                v = velocity(latent, z, t)
                z0, z1 = z - t * v, z + (1 - t) * v
            z0y = (1 - t) * z0 + t * self._consistency(problem, z0)
            with torch.no_grad():
                noise = math.sqrt(t_next) * z1 + math.sqrt(1 - t_next) * latent.randn()
                z = (1 - t_next) * z0y + t_next * noise
            latent.report(i, float(sigma_of(t)), z, z0)
        with torch.no_grad():
            return problem.prior.decode(z)
