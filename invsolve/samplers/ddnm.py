"""Denoising diffusion null-space models (DDNM, DDNM+)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.updates import spectral_measurement


def time_travel_order(steps: int, length: int, repeat: int) -> list[int]:
    """Indices into a grid of ``steps + 1`` sigmas in the order they are visited.

    Without time travel (``length = 0``) this is ``0, 1, ..., steps``.  With it, on
    reaching an index ``j`` that is a multiple of ``length`` (before the last one) the
    sampler jumps back to ``j - length`` and walks down again, ``repeat`` times per ``j``.
    """
    if length < 0 or repeat < 0:
        raise ValueError(f"travel_length and travel_repeat must be >= 0, got {length}, {repeat}")
    order, jumps, i = [0], {}, 0
    while i < steps:
        i += 1
        order.append(i)
        if length and i % length == 0 and i < steps and jumps.get(i, 0) < repeat:
            jumps[i] = jumps.get(i, 0) + 1
            i -= length
            order.append(i)
    return order


@register
@dataclass
class DDNM(Method):
    r"""Denoising diffusion null-space model (Wang, Yu & Zhang, "Zero-Shot Image
    Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023).

    Range-null-space decomposition: the denoised estimate ``D = D(x, sigma)`` keeps its
    null-space part and has its range part replaced by the measurement's,

    .. math::
        \hat x_0 = D - \lambda A^+ (A D - y),

    then a DDIM step with the network's noise estimate ``eps = (x - D) / sigma``:
    ``x' = \hat x_0 + g (\sqrt{1 - \eta^2}\, eps + \eta z)``.

    * Noiseless (DDNM): ``lambda = 1``, ``g = sigma'``.
    * Noisy (DDNM+, chosen when ``noise_sigma > 0``): ``A^+ y`` carries noise of about
      ``sigma_y``, so ``lambda = min(1, sigma' / sigma_y)`` and only the missing noise
      is injected, ``g = sqrt(max(sigma'^2 - lambda^2 sigma_y^2, 0))`` (zero once
      ``sigma' < sigma_y``).  This treats ``A^+ n`` as having standard deviation
      ``sigma_y``, exact when ``A A^T = I`` (masks, normalised super-resolution).
      When the operator has an SVD the rule is applied per singular value instead
      (the paper's remark for ill-conditioned ``A``): in ``V^T`` coordinates the range
      part ``ybar_i = (U^T y)_i / s_i`` has noise ``sigma_y / s_i``, so
      ``lambda_i = min(1, sigma' s_i / sigma_y)``, ``g_i = sqrt(max(sigma'^2 - lambda_i^2 sigma_y^2 / s_i^2, 0))``
      and the null space keeps ``lambda = 0``, ``g = sigma'``.  Without this, ``A^+``
      amplifies the noise of small singular values (by ``1 / s_min``) unchecked.

    Time travel (DDNM+, optional, off by default): every ``travel_length`` steps the
    sample is re-noised back ``travel_length`` levels, ``x <- x + sqrt(sigma_hi^2 - sigma_lo^2) z``,
    and those steps are redone, ``travel_repeat`` times.

    Noise scale: the paper's sigma_y is on the [0, 1] scale, doubled for [-1, 1];
    ``noise_sigma`` here is already on [-1, 1] and enters as is.  Grid: the prior's
    EDM grid (rho = 7).  Defaults: 100 steps, ``eta = 0.85``.  Needs ``A^+``; 1 NFE per
    step (plus the redone steps of time travel), no network backprop.
    """

    name = "ddnm"
    needs = ("pinv", "pixel")
    default_steps = 100
    summary = "DDNM / DDNM+: range-null-space decomposition with A^+ (noisy variant when noise_sigma > 0)"

    eta: float = 0.85
    travel_length: int = 0
    travel_repeat: int = 1

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.sigmas()
        order = time_travel_order(len(sigmas) - 1, self.travel_length, self.travel_repeat)
        op = problem.operator
        svd = op.svd(problem.x_shape) if problem.noise_sigma > 0 and "svd" in op.capabilities else None
        spectral = None if svd is None else spectral_measurement(svd, problem.y, problem.x_shape)
        x = sigmas[0] * problem.randn()
        step = 0
        for a, b in problem.iterate(list(zip(order[:-1], order[1:])), self.name):
            if b < a:
                x = x + math.sqrt(sigmas[b] ** 2 - sigmas[a] ** 2) * problem.randn()
                continue
            sigma, sigma_next = sigmas[a], sigmas[b]
            denoised = problem.denoise(x, sigma)
            eps = (x - denoised) / sigma
            if spectral is None:
                x = self._step(problem, denoised, eps, sigma_next)
            else:
                x = svd.V(self._spectral_step(problem, svd.Vt(denoised), svd.Vt(eps), *spectral, sigma_next))
            problem.report(step, sigma, x, denoised)
            step += 1
        return x

    def _step(self, problem: Problem, denoised: Tensor, eps: Tensor, sigma_next: float) -> Tensor:
        """DDNM / DDNM+ with ``A^+`` and a scalar ``lambda``."""
        sigma_y = problem.noise_sigma
        lam = 1.0 if sigma_y == 0 else min(1.0, sigma_next / sigma_y)
        x0 = denoised - lam * problem.operator.pinv(problem.operator(denoised) - problem.y)
        gain = math.sqrt(max(sigma_next**2 - (lam * sigma_y) ** 2, 0.0))
        if gain == 0:
            return x0
        return x0 + gain * (math.sqrt(1 - self.eta**2) * eps + self.eta * problem.randn())

    def _spectral_step(
        self, problem: Problem, d: Tensor, eps: Tensor, s: Tensor, ybar: Tensor, sigma_next: float
    ) -> Tensor:
        """DDNM+ per singular value: ``lambda_i = min(1, sigma' s_i / sigma_y)`` on ``V^T x``."""
        observed = s > 0
        noise = problem.noise_sigma / torch.where(observed, s, torch.ones_like(s))
        lam = torch.where(observed, (sigma_next / noise).clamp(max=1.0), torch.zeros_like(s))
        x0 = d - lam * (d - ybar)
        gain = (sigma_next**2 - (lam * noise) ** 2).clamp_min(0).sqrt()
        z = problem.randn(tuple(s.shape))
        return x0 + gain * (math.sqrt(1 - self.eta**2) * eps + self.eta * z)
