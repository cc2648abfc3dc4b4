"""Denoising diffusion null-space models (DDNM, DDNM+)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.updates import spectral_measurement, vp_start_std


def ddnm_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``u * (T // steps)`` for ``u = steps - 1, ..., 0``: DDNM's grid (``functions/svd_ddnm.py``:
    ``skip = T // T_sampling``, timesteps ``i * skip``), t = 990, 980, …, 0 for 100 steps.

    The same as :func:`invsolve.schedules.strided_timesteps` when ``steps`` divides ``T``;
    otherwise it has exactly ``steps`` levels, as there.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie between 1 and the prior's {num_timesteps} training timesteps, got {steps}")
    return [u * (num_timesteps // steps) for u in range(steps - 1, -1, -1)]


def time_travel_order(steps: int, length: int, repeat: int) -> list[int]:
    """Indices into DDNM's grid of ``steps + 1`` sigmas (index ``steps`` is sigma 0), in visiting order.

    DDNM's time travel (the RePaint schedule, ``get_schedule_jump`` in ``functions/svd_ddnm.py``)
    counted in sampling timesteps ``u = steps - 1 - index``: walking down from
    ``u = steps - 1`` to ``-1``, at every ``u`` that is a multiple of ``length`` below
    ``steps - length`` the walk climbs ``length`` levels and descends again, ``repeat - 1``
    times.  ``length = repeat = 1`` (the official configs) visits ``0, 1, ..., steps``.
    """
    if length < 1 or repeat < 1:
        raise ValueError(f"travel_length and travel_repeat must be >= 1, got {length}, {repeat}")
    visited: list[int] = []
    for u in range(steps - 1, -1, -1):
        visited.append(u)
        if u % length == 0 and u < steps - length:
            climb = list(range(u + 1, u + length + 1))
            visited += (climb + climb[-2::-1] + [u]) * (repeat - 1)
    visited.append(-1)
    return [steps - 1 - u for u in visited]


@register
@dataclass
class DDNM(Method):
    r"""Denoising diffusion null-space model, DDNM and DDNM+ (Wang, Yu & Zhang, "Zero-Shot Image
    Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023).

    Official code: wyhuai/DDNM, its SVD path (``functions/svd_ddnm.py``: ``ddnm_diffusion``,
    ``ddnm_plus_diffusion``; ``functions/svd_operators.py``: ``Lambda``, ``Lambda_noise``;
    ``configs/*.yml``, ``main.py``).  Per step ``sigma -> sigma'`` with ``D = D(x, sigma)`` and
    ``eps = (x - D) / sigma``:

    * noiseless (DDNM): ``x0 = D - A^+ (A D - y)``, ``x' = x0 + sigma' (eta z + sqrt(1 - eta^2) eps)``;
    * noisy (DDNM+, ``noise_sigma > 0``), per spectral coordinate of ``A = U diag(s) V^T`` with
      ``rho_i = sigma_y / s_i`` (the noise of ``ybar_i = (U^T y)_i / s_i``):

      - ``sigma' > rho_i``: ``x'_i = ybar_i + sqrt(sigma'^2 - rho_i^2) z_i``;
      - ``sigma' < rho_i``: ``lambda_i = sqrt(1 - eta^2) sigma' / rho_i``,
        ``x'_i = D_i - lambda_i (D_i - ybar_i) + eta sigma' z_i``;
      - null space and ``sigma' = rho_i`` exactly: ``x'_i = x0_i + sigma' (eta z_i + sqrt(1 - eta^2) eps_i)``,

      i.e. ``x0 = D - V diag(lambda) V^T A^+ (A D - y)`` plus the noise of ``Lambda_noise``.
      At the last step (``sigma' = 0``) ``lambda = 0`` and the output is ``D``.

    Time travel (``travel_length``, ``travel_repeat``) follows the RePaint schedule of
    :func:`time_travel_order`; a jump back to ``sigma_b`` re-noises the last denoised estimate,
    ``x = D_last + sigma_b z``, as the official code does from ``x0_preds[-1]``.  Official runs
    (``configs/celeba_hq.yml``, ``imagenet_256.yml``): 100 steps on :func:`ddnm_timesteps`
    (t = 990, …, 0; the EDM grid for priors without a table) and a last step to 0, no time
    travel, ``eta`` 0.85, start ``x_T ~ N(0, I)`` in VP, ``x0`` not clamped.

    Deviations from the official code:

    * ``noise_sigma`` is on the [-1, 1] scale (the official ``--sigma_y`` is doubled from [0, 1]);
    * ``Lambda_noise`` takes ``eps`` to spectral coordinates (``V^T eps``) like every other
      vector; some official operator classes (super-resolution, deblurring, colourisation) skip
      ``V^T`` there (for masks both are the same);
    * without an SVD, noisy problems use the SVD rule with every nonzero singular value taken
      as 1 (the official ``Denoising`` class; exact when ``A A^T = I``, e.g. masks): one
      ``lambda`` from ``rho = sigma_y``, range and null parts split by ``P = A^+ A``.  The official
      no-SVD ("simplified") path is not followed: it computes ``sigma_t = sqrt(1 - abar_{t-1}^2)``
      and scales its noise by the product of two noise levels (``gamma_t * c1``).  For operators
      with ``A A^T != I`` the noise of ``A^+ n`` (``1 / s`` in some directions) stays in the result.
    """

    name = "ddnm"
    needs = ("pinv", "pixel")
    default_steps = 100
    cost = (
        "1 network call and 1 application of A^+ (the SVD when noisy) per step, plus the redone steps of time"
        " travel; no backprop"
    )
    summary = "DDNM / DDNM+: range-null-space decomposition with A^+ (noisy variant when noise_sigma > 0)"

    eta: float = 0.85
    travel_length: int = 1
    travel_repeat: int = 1

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        steps = problem.steps
        sigmas = problem.timestep_sigmas(ddnm_timesteps)
        order = time_travel_order(steps, self.travel_length, self.travel_repeat)
        op = problem.operator
        svd = op.svd(problem.x_shape) if problem.noise_sigma > 0 and "svd" in op.capabilities else None
        spectral = None if svd is None else spectral_measurement(svd, problem.y, problem.x_shape)
        x = vp_start_std(problem, sigmas[0]) * problem.randn()
        denoised, step = None, 0
        for a, b in problem.iterate(list(zip(order[:-1], order[1:])), self.name):
            if b < a:
                x = denoised + sigmas[b] * problem.randn()
                continue
            sigma, sigma_next = sigmas[a], sigmas[b]
            denoised = problem.denoise(x, sigma)
            eps = (x - denoised) / sigma
            if problem.noise_sigma == 0:
                x = self._noiseless_step(problem, denoised, eps, sigma_next)
            elif spectral is None:
                x = self._range_step(problem, denoised, eps, sigma_next)
            else:
                z = problem.randn(tuple(spectral[0].shape))
                x = svd.V(self._spectral_step(problem, svd.Vt(denoised), svd.Vt(eps), *spectral, sigma_next, z))
            problem.report(step, sigma, x, denoised)
            step += 1
        return x

    def _noise(self, problem: Problem, eps: Tensor, sigma_next: float) -> Tensor:
        """``sigma' (eta z + sqrt(1 - eta^2) eps)``: the DDIM noise of the null space."""
        return sigma_next * (self.eta * problem.randn() + math.sqrt(1 - self.eta**2) * eps)

    def _noiseless_step(self, problem: Problem, denoised: Tensor, eps: Tensor, sigma_next: float) -> Tensor:
        """DDNM: ``x0 = D - A^+ (A D - y)`` and the DDIM noise."""
        op = problem.operator
        return denoised - op.pinv(op(denoised) - problem.y) + self._noise(problem, eps, sigma_next)

    def _range_step(self, problem: Problem, denoised: Tensor, eps: Tensor, sigma_next: float) -> Tensor:
        """DDNM+ with ``A^+`` alone: the spectral rule with unit singular values, ``P = A^+ A``."""
        op, sigma_y = problem.operator, problem.noise_sigma
        lam = math.sqrt(1 - self.eta**2) * sigma_next / sigma_y if sigma_next < sigma_y else 1.0
        x0 = denoised - lam * op.pinv(op(denoised) - problem.y)
        null_noise = self._noise(problem, eps, sigma_next)
        gain = self.eta * sigma_next if sigma_next < sigma_y else math.sqrt(sigma_next**2 - sigma_y**2)
        range_noise = gain * problem.randn()
        return x0 + null_noise + op.pinv(op(range_noise - null_noise))

    def _spectral_step(
        self, problem: Problem, d: Tensor, eps: Tensor, s: Tensor, ybar: Tensor, sigma_next: float, z: Tensor
    ) -> Tensor:
        """DDNM+ per singular value (``Lambda`` and ``Lambda_noise`` of the official SVD code) on ``V^T x``."""
        observed = s > 0
        rho = problem.noise_sigma / torch.where(observed, s, torch.ones_like(s))
        below = observed & (sigma_next < rho)
        above = observed & (sigma_next > rho)
        keep = math.sqrt(1 - self.eta**2)
        lam = torch.where(below, keep * sigma_next / rho, torch.ones_like(s))
        x0 = torch.where(observed, d - lam * (d - ybar), d)
        spread = (sigma_next**2 - rho**2).clamp_min(0).sqrt()
        fresh = torch.where(above, spread, torch.full_like(s, self.eta * sigma_next))
        kept = torch.where(below | above, torch.zeros_like(s), torch.full_like(s, keep * sigma_next))
        return x0 + fresh * z + kept * eps
