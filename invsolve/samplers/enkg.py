"""Ensemble Kalman diffusion guidance (EnKG): derivative-free posterior sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from einops import rearrange
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.schedules import karras_sigmas


def in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int | None) -> Tensor:
    """``fn`` applied to ``x`` in consecutive row chunks of at most ``batch_size`` rows."""
    if batch_size is None or x.shape[0] <= batch_size:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in x.split(batch_size)])


def kalman_increment(x: Tensor, predicted: Tensor, y: Tensor, eta: float) -> Tensor:
    r"""The EnKG correction ``-(eta / ||M||_F) Delta`` for ensembles ``(G, J, ...)``.

    With errors ``e^j = G(x0^j) - y``, ``M_jk = <e^j, G(x0^k) - mean_k G(x0^k)> / J``
    and ``Delta^j = sum_k M_jk (x^k - mean_k x^k)``.  ``Delta`` is the ensemble
    (statistical-linearisation) estimate of ``C_xx0 grad ||G(x0) - y||^2 / 2``, a
    preconditioned gradient that needs no derivative of ``G``.  Ensembles whose
    ``M`` vanishes (all predictions equal) are left unchanged.
    """
    groups, size = x.shape[:2]
    x = x.reshape(groups, size, -1)
    predicted = predicted.reshape(groups, size, -1)
    errors = predicted - y.reshape(groups, 1, -1)
    spread = predicted - predicted.mean(dim=1, keepdim=True)
    M = errors @ spread.transpose(1, 2) / size
    delta = M @ (x - x.mean(dim=1, keepdim=True))
    norm = torch.linalg.matrix_norm(M)
    step = torch.where(norm > 0, eta / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
    return -(step[:, None, None] * delta)


@register
@dataclass
class EnKG(Method):
    r"""Ensemble Kalman diffusion guidance (Zheng et al., "Ensemble Kalman Diffusion Guidance: A
    Derivative-free Method for Inverse Problems", arXiv:2409.20175, 2024).

    Official code: devzhk/enkg-pytorch (``algo/enkg.py``; ``scripts/ffhq.sh`` over
    ``configs/algorithm/enkg.yaml``).  Needs only forward evaluations of the operator ``G`` (no
    gradient, adjoint, pseudo-inverse or network backprop), so it accepts black-box simulators
    (:class:`operators.BlackBox`).

    An ensemble of ``J`` particles starts from ``N(0, sigma_max^2 I)`` and follows the
    probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` on the EDM grid
    (``sigma_max`` 80 → ``sigma_min`` 0.002, ``rho`` 7, then 0), one Euler step per level.
    Before the Euler step of each guided level ``i`` (all but the first and last
    ``skip_fraction`` of the ``N`` steps) the ensemble is corrected ``updates`` (``U``) times:

    1. ``x0^j``: ``K_i = min(1 + (N - i) // ode_step_divisor, max_ode_steps)`` Euler steps of the
       probability-flow ODE from ``x^j`` at ``sigma_i`` down to ``sigma_min`` and 0
       (``K_i = 1``: ``D(x^j, sigma_i)``);
    2. ``e^j = G(x0^j) - y``, ``M_jk = <e^j, G(x0^k) - mean_k G(x0^k)> / J``,
       ``Delta^j = sum_k M_jk (x^k - xbar)``;
    3. ``x^j <- x^j - (eta_i / ||M||_F) Delta^j`` with ``eta_i = eta`` (``lr_min_ratio = 0``) or
       ``eta (1 - r) (N - i) / N + r`` for ``r = lr_min_ratio > 0`` (``get_lr``).

    ``noise_sigma`` does not enter the update (the step is normalised by ``||M||_F``).  Every
    distinct measurement gets its own ensemble of ``max(ensemble_size, copies)`` particles
    (``copies``: how often it occurs among the rows, ``num_samples`` under :func:`invsolve.solve`),
    and its rows receive the ensemble's first particles, so ``num_samples = J`` with
    ``ensemble_size = J`` returns a whole ensemble; samples of one ensemble are exchangeable,
    not independent.  :class:`invsolve.Result` reports NFE and operator calls per returned
    sample (the ensemble's over ``num_samples``).  ``batch_size`` chunks the particles for
    memory without changing the result.  Defaults are the official image runs: ``J`` 1024,
    ``U`` 2, ``eta`` 2, ``lr_min_ratio`` 0, 80 steps, ``skip_fraction`` 0.05
    (``threshold_start = threshold_end``), x0 predictor ``min(1 + (N - i) // 4, 20)`` steps.

    Deviations from the official code:

    * the official ADM is queried at the continuous VP time ``999 t(sigma)`` (EDM's
      ``VPPrecond``); here the timestep is interpolated in ``log sigma`` over the exact table and
      clamped at its ends (levels keep their sigma; below sigma 0.01 the official network sees
      t < 1, invsolve's t = 0);
    * the official ensemble serves one measurement; here every distinct measurement gets its own;
    * the x0 predictor ends at ``sigma_min`` (0.002 by default), not a fixed 0.002.
    """

    name = "enkg"
    needs = ("forward", "pixel")
    default_steps = 80
    cost = "per particle: 1 network call per unguided level; per guided level U (updates) x0 predictions of K_i network calls (the inner ODE) and U operator calls, plus the Euler step's call; no gradients"
    summary = "ensemble Kalman guidance (derivative-free: forward evaluations of the operator only)"

    ensemble_size: int = 1024
    updates: int = 2
    eta: float = 2.0
    lr_min_ratio: float = 0.0
    skip_fraction: float = 0.05
    ode_step_divisor: int = 4
    max_ode_steps: int = 20
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    rho: float = 7.0
    batch_size: int | None = 128

    def __post_init__(self) -> None:
        if self.ensemble_size < 2:
            raise ValueError(
                f"ensemble_size must be >= 2 (the update uses ensemble covariances), got {self.ensemble_size}"
            )
        if self.updates < 0:
            raise ValueError(f"updates must be >= 0, got {self.updates}")
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if not 0 <= self.skip_fraction < 0.5:
            raise ValueError(f"skip_fraction must be in [0, 0.5), got {self.skip_fraction}")
        if self.ode_step_divisor < 1 or self.max_ode_steps < 1:
            raise ValueError("ode_step_divisor and max_ode_steps must be >= 1")
        if not 0 <= self.lr_min_ratio <= 1:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def ode_steps(self, i: int, steps: int) -> int:
        """``K_i``, the Euler steps of the x0 prediction at level ``i`` of ``steps``."""
        return min(1 + (steps - i) // self.ode_step_divisor, self.max_ode_steps)

    def is_guided(self, i: int, steps: int) -> bool:
        """Whether level ``i`` gets the ensemble update (not the first nor the last ``skip_fraction``).

        As in the authors' code: ``skip_fraction * N < i < N - floor(skip_fraction * N)``.
        """
        return self.skip_fraction * steps < i < steps - int(self.skip_fraction * steps)

    def guidance_scale(self, i: int, steps: int) -> float:
        """``eta_i``: ``eta``, or with ``lr_min_ratio = r > 0`` the official ``eta (1 - r) (N - i) / N + r``."""
        if self.lr_min_ratio > 0:
            return self.eta * (1 - self.lr_min_ratio) * (steps - i) / steps + self.lr_min_ratio
        return self.eta

    def _predict_x0(self, problem: Problem, x: Tensor, sigma: float, steps: int, sigma_end: float) -> Tensor:
        """End point of ``steps`` Euler steps of the probability-flow ODE from ``sigma`` to 0."""
        grid = karras_sigmas(steps, sigma_end, sigma, self.rho).tolist()
        for s, s_next in zip(grid[:-1], grid[1:]):
            x = euler_step(x, problem.denoise(x, s), s, s_next)
        return x

    def _predict_measurements(self, problem: Problem, x: Tensor, sigma: float, steps: int, sigma_end: float) -> Tensor:
        """``G(x0)`` for the probability-flow prediction ``x0`` of every particle in ``x``."""
        return problem.operator(self._predict_x0(problem, x, sigma, steps, sigma_end))

    def run(self, problem: Problem) -> Tensor:
        y, size, returned = ensemble_layout(problem.y, self.ensemble_size)
        num_groups = y.shape[0]
        sigma_end, sigma_start = self.sigma_min, self.sigma_max
        sigmas = karras_sigmas(problem.steps, sigma_end, sigma_start, self.rho).tolist()
        steps = len(sigmas) - 1
        x = sigma_start * ensemble_noise(problem, returned // size, num_groups, size)
        with torch.no_grad():
            for i in problem.iterate(range(steps), self.name):
                sigma, sigma_next = sigmas[i], sigmas[i + 1]
                if self.is_guided(i, steps):
                    k = self.ode_steps(i, steps)
                    predict = partial(self._predict_measurements, problem, sigma=sigma, steps=k, sigma_end=sigma_end)
                    eta = self.guidance_scale(i, steps)
                    for _ in range(self.updates):
                        predicted = in_chunks(predict, x, self.batch_size)
                        x = x + kalman_increment(
                            x.reshape(num_groups, size, -1), predicted.reshape(num_groups, size, -1), y, eta
                        ).reshape(x.shape)
                denoised = in_chunks(lambda c: problem.denoise(c, sigma), x, self.batch_size)
                x = euler_step(x, denoised, sigma, sigma_next)
                if problem.callback is not None:
                    problem.report(i, sigma, x[returned], denoised[returned])
        return x[returned].reshape(problem.x_shape)


def euler_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma`` to ``sigma_next``."""
    return denoised if sigma_next == 0 else x + (sigma_next - sigma) / sigma * (x - denoised)


def ensemble_noise(problem: Problem, row_group: Tensor, num_groups: int, size: int) -> Tensor:
    """``N(0, I)`` for the ``(G * J)`` particles, ensemble after ensemble.

    With one generator per image (``problem.images = B > 1``) the ``J`` particles of
    the ensemble of image ``b`` are drawn in one block from generator ``b`` (what a solve
    of that image alone draws); ``row_group`` gives each row's ensemble, and row ``r``
    belongs to image ``r % B``.
    """
    rest = tuple(problem.x_shape[1:])
    images = problem.images
    if images == 1:
        return problem.randn((num_groups * size, *rest))
    per_image = rearrange(problem.randn((size * images, *rest)), "(k b) ... -> b k ...", b=images)
    rows = torch.arange(len(row_group), device=row_group.device)
    image_of_group = torch.zeros(num_groups, dtype=torch.long, device=row_group.device)
    image_of_group[row_group] = rows % images
    return rearrange(per_image[image_of_group.to(per_image.device)], "g k ... -> (g k) ...")


def ensemble_layout(y: Tensor, ensemble_size: int) -> tuple[Tensor, int, Tensor]:
    """Group identical measurement rows into ensembles.

    Returns the distinct measurements ``(G, *y.shape[1:])``, the ensemble size
    ``J = max(ensemble_size, largest number of copies)`` and, for each row of
    ``y``, the index of its particle in the flattened ``(G * J)`` ensemble: the
    copies of one measurement get particles ``0, 1, ...`` of its ensemble, in row order.
    """
    distinct, group, counts = torch.unique(y.flatten(1), dim=0, return_inverse=True, return_counts=True)
    size = max(ensemble_size, int(counts.max()))
    order = torch.argsort(group, stable=True)
    first_row = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(y.shape[0], device=group.device) - first_row[group[order]]
    return distinct.reshape(-1, *y.shape[1:]), size, group * size + rank
