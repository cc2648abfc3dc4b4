"""Pieces shared by the text-conditioned latent methods (TReg, P2L): the text-prior contract,
the DDIM grid of the TReg repository on Stable Diffusion, the pixel data-consistency step and
the latent residual gradient.

A *text-conditioned latent prior* offers, besides the latent-prior contract
(``denoise`` / ``encode`` / ``decode`` / ``latent_shape``):

* ``text_conditioned = True`` and ``prompt``, the prompt it was loaded with;
* ``encode_text(prompt) -> Tensor``: the prompt's embedding, shape ``(1, *embedding_shape)``;
* ``text_conditioning(prompt_embeds, negative_embeds, guidance_scale)``: a context manager
  inside which ``denoise`` is the classifier-free-guided estimate (Ho & Salimans, 2021)
  ``D(x; neg) + w (D(x; c) - D(x; neg))`` with these embeddings (``None`` keeps the current
  one).  Embeddings have one row, or one per batch row; gradients flow to them.

:class:`priors.DiffusersLatentPrior` implements it for Stable Diffusion pipelines; analytic
test priors can too.  ``solve()`` sees such a prior as offering ``text``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invsolve.samplers.base import Problem
from invsolve.samplers.latent import network_epsilon
from operators.conjugate_gradient import conjugate_gradient

#: How the data-consistency step solves ``(A^T A + lambda I) x = A^T y + lambda x0``.
CONSISTENCY_SOLVERS = ("cg", "prox")
#: Relative residual at which the few conjugate-gradient iterations stop early.
CG_TOLERANCE = 1e-6
#: Stable Diffusion v1.x's scheduler ``steps_offset``, which the TReg repository runs.
SD_STEPS_OFFSET = 1


def leading_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps ``i * (T // steps)``, ``i = steps-1 .. 0``: diffusers' "leading" DDIM spacing
    (``DDIMScheduler.set_timesteps`` before its ``steps_offset``).  Unlike
    :func:`~invsolve.schedules.strided_timesteps` it always gives ``steps`` levels."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie between 1 and the prior's {num_timesteps} training timesteps, got {steps}")
    stride = num_timesteps // steps
    return [i * stride for i in range(steps)][::-1]


def sd_ddim_levels(problem: Problem, steps_offset: int = SD_STEPS_OFFSET) -> tuple[list[float], list[float]]:
    """``(levels, network_levels)`` of the DDIM loop of the TReg repository (TReg and its P2L baseline).

    That code asks the UNet at diffusers' timesteps ``t = leading + steps_offset`` (1 for
    Stable Diffusion v1.x) but reads ``abar`` from ``alphas_cumprod`` with a 1 prepended, i.e.
    ``abar[t - 1]``: the state's noise is that of the leading timestep while the network
    is told one timestep more.  So step ``i`` moves the state from ``levels[i]`` (the leading
    timesteps' sigmas, then 0 for the clean estimate the code decodes) to ``levels[i + 1]``,
    and the network is asked at ``network_levels[i]`` (clamped to the table's last level).
    A prior without a timestep table gets its EDM grid for both.
    """
    table = problem.sigma_table
    if table is None:
        grid = problem.sigmas()
        return grid, grid[:-1]
    T = len(table)
    timesteps = leading_timesteps(T, problem.steps)
    levels = [float(table[t]) for t in timesteps] + [0.0]
    return levels, [float(table[min(t + steps_offset, T - 1)]) for t in timesteps]


def network_estimate(problem: Problem, z: Tensor, sigma: float, sigma_net: float) -> tuple[Tensor, Tensor]:
    """``(z0, eps)``: :func:`~invsolve.samplers.latent.network_epsilon` (the network's epsilon for the
    VP state of ``z`` at level ``sigma``, asked at the timestep of level ``sigma_net``) and
    Tweedie's ``z0 = z - sigma eps`` at the state's own level."""
    eps = network_epsilon(problem, z, sigma, sigma_net)
    return z - sigma * eps, eps


def text_prior(problem: Problem, method: str):
    """The problem's prior, checked to be a text-conditioned latent prior (see the module docstring)."""
    prior = problem.prior
    if not getattr(prior, "text_conditioned", False):
        raise ValueError(
            f"method {method!r} needs a text-conditioned latent prior (a Stable Diffusion pipeline with "
            "text_encoder/ and tokenizer/, loaded with load_prior)"
        )
    return prior


def on_schedule(step: int, steps: int, every: int, until: float) -> bool:
    """Whether step ``step`` (0-based, of ``steps``) is one of every ``every``-th steps before ``until * steps``."""
    return every > 0 and step % every == 0 and step < until * steps


def per_row(embeds: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
    """A private copy of a one-row embedding for each of ``rows`` batch rows."""
    return embeds.detach().to(dtype).expand(rows, *embeds.shape[1:]).clone()


def consistent_image(operator, x0: Tensor, y: Tensor, lam: float, iterations: int, solver: str = "cg") -> Tensor:
    r"""The data-consistent image ``argmin_x ||y - A x||^2 + lambda ||x - x0||^2``, i.e.

    .. math:: (A^T A + \lambda I)\,x = A^T y + \lambda x_0 ,

    row by row.  ``solver="cg"``: ``iterations`` conjugate-gradient steps started at ``x0``
    (TReg's ``data_consistency``, 5 iterations, ``lambda = 1e-4``); ``"prox"``: the
    operator's own ``prox`` (closed form for masks and circular blur / super-resolution,
    converged CG otherwise).  Both reach the exact solution when CG converges.
    """
    if solver == "prox":
        return operator.prox(x0, y, lam)
    if solver != "cg":
        raise ValueError(f"unknown data-consistency solver {solver!r}; use one of {', '.join(CONSISTENCY_SOLVERS)}")
    rhs = operator.adjoint(y) + lam * x0
    return conjugate_gradient(
        lambda v: operator.adjoint(operator(v)) + lam * v, rhs, iterations, CG_TOLERANCE, x0=x0
    )


def latent_residual_gradient(
    problem: Problem, z: Tensor, sigma: float, sigma_net: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`network_estimate`'s ``z0`` and ``eps``, the decoded ``x0 = Dec(z0)`` and
    ``grad_z sum_n ||y_n - A(x0_n)||_2`` (per-sample norms, as latent DPS) for the pixel-space ``problem``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        z0, eps = network_estimate(problem, z, sigma, sigma_net)
        x0 = problem.prior.decode(z0)
        norms = (problem.y - problem.operator(x0)).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(norms.sum(), z)
    return z0.detach(), eps.detach(), x0.detach(), grad
