"""Gen2Res restoration: noise the degraded image part of the way, then generate back with the prior."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.dps import denoise_and_variance, resolve_learned_variance
from invsolve.samplers.updates import ancestral_step, ddim_step, ve_step_factor
from invsolve.schedules import respaced_timesteps, table_grid
from priors.adm import linear_alphas_cumprod


def degraded_image(problem: Problem) -> Tensor:
    """The measurement as an image of the unknown's shape: itself, or resized with nearest
    neighbours (``F.interpolate``'s default, as ``ref_sample_single.py`` resizes its input)."""
    y, shape = problem.y, tuple(problem.x_shape)
    if tuple(y.shape) == shape:
        return y
    if y.ndim != 4 or len(shape) != 4 or y.shape[:2] != shape[:2]:
        raise ValueError(
            f"gen2res restores the degraded image itself: the measurement must be an image batch with the "
            f"unknown's channels (got {tuple(y.shape)} for an unknown {shape}); pass operators.build('denoising')"
        )
    return F.interpolate(y, size=shape[-2:])


@register
@dataclass
class Gen2Res(Method):
    r"""Restoration by generation (Ding, Zhang, Tu and Xia, "Restoration by Generation with
    Constrained Priors", CVPR 2024; official code ``adobe-research/gen2res``,
    ``scripts/ref_sample_single.py`` and ``guided_diffusion/gaussian_diffusion.py`` ``p_sample_loop``).

    Blind: the operator is ignored and the measurement ``y`` is the degraded image (resized to the
    unknown's size where it differs, as the official script does).  For a measurement with no
    forward model pass the identity, ``operators.build("denoising")``.  With the prior's
    table ``sigma_t`` and ``K = noise_step``, in the VE form of the official ``q_sample(y, K - 1)``:

    .. math::
        x_K = y + \sigma_{K-1}\, \varepsilon, \qquad
        x \leftarrow \mathrm{DDPM}(x, \sigma_t \to \sigma_{t'}) \quad (t = K-1, \dots, 0),

    the plain DDPM chain (posterior mean ``x0 + (sigma'^2 / sigma^2)(x - x0)``, the prior's learned
    variance where it has one, else the fixed-small one), returning its final ``x0``.  ``K = 0``
    returns ``y``.  The chain visits ``min(steps, K)`` timesteps respaced over ``0 .. K-1``
    (guided-diffusion's rule; ``steps = K``, the default 200, is every timestep, as the official loop).

    Skip guidance (official ``--skip 10 --scale 0.3``, on in the README's command): at the
    timesteps with ``(t + 1) % guidance_skip == 0`` the step is followed by
    ``x <- x - scale sqrt((1 + sigma^2)(1 + sigma'^2)) grad_x ||y - D(x, sigma)||_2`` (the norm not
    squared, per sample; the square root converts the official VP step, as in :mod:`dps`); it
    backpropagates through the network.  ``guidance_scale = 0`` gives the plain chain of the paper.

    Defaults: ``noise_step = 200`` (README), ``clip_denoised`` (official default), learned variance
    where the prior has one (official ``learn_sigma=True``).  A prior without a timestep table runs
    on the linear DDPM table of guided-diffusion.  The paper's fine-tuning of the prior on an
    album (``scripts/finetune.py``) is not part of this method.

    Being blind, it cannot tell a mask's zeros from image content: on ``natural-64`` box inpainting
    (64 px, one held-out crop) it ends 3.1 dB below the no-learning fill, which knows the mask.

    Differences from the official code: its ``noise_step = 0`` means generation from pure noise;
    here ``K = 0`` returns ``y`` (no noise added).  The residual norm is per sample (the official
    sum over a batch of 1 is the same).
    """

    name = "gen2res"
    needs = ("pixel",)
    default_steps = 200
    summary = "blind restoration by generation: noise the degraded image to step K, run the DDPM chain back"
    clips_denoised = True
    cost = "one denoiser call per step, a backpropagation through it at each guided step"

    noise_step: int = 200
    guidance_scale: float = 0.3
    guidance_skip: int = 10
    learned_variance: bool | None = None

    def resolved(self, problem: Problem) -> Gen2Res:
        table = self.table(problem)
        if not 0 <= self.noise_step <= len(table):
            raise ValueError(f"noise_step must be in 0 ... {len(table)} (the prior's timesteps), got {self.noise_step}")
        if self.guidance_scale < 0 or self.guidance_skip < 0:
            raise ValueError("guidance_scale and guidance_skip must be >= 0")
        return dataclasses.replace(self, learned_variance=resolve_learned_variance(self, problem))

    @staticmethod
    def table(problem: Problem) -> Tensor:
        """The prior's ascending sigma per timestep, or guided-diffusion's linear table."""
        table = problem.sigma_table
        if table is None:
            abar = linear_alphas_cumprod()
            table = ((1 - abar) / abar).sqrt()
        return table

    def guided(self, timestep: int) -> bool:
        return self.guidance_scale > 0 and self.guidance_skip > 0 and (timestep + 1) % self.guidance_skip == 0

    def step(self, problem: Problem, x: Tensor, y: Tensor, sigma: float, sigma_next: float,
             guided: bool) -> tuple[Tensor, Tensor]:
        """One DDPM step ``sigma -> sigma_next``, then the guidance step where ``guided``."""
        learned = bool(self.learned_variance)
        with torch.set_grad_enabled(guided):
            x_in = x.detach().requires_grad_(guided)
            x0, variance = denoise_and_variance(problem, x_in, sigma, sigma_next, learned)
            if guided:
                norms = (y - x0).flatten(1).norm(dim=1)
                (grad,) = torch.autograd.grad(norms.sum(), x_in)
        with torch.no_grad():
            x0 = x0.detach()
            if variance is not None:
                x_next = ancestral_step(x0, x, sigma, sigma_next, variance.detach(), problem.randn(tuple(x.shape)))
            else:
                x_next = ddim_step(x0, (x - x0) / sigma, sigma, sigma_next, 1.0, problem.randn)
            if guided:
                x_next = x_next - self.guidance_scale * ve_step_factor(sigma, sigma_next) * grad
        return x_next, x0

    def run(self, problem: Problem) -> Tensor:
        y = degraded_image(problem)
        if self.noise_step == 0:
            return y.clone()
        timesteps = respaced_timesteps(self.noise_step, min(problem.steps, self.noise_step))
        sigmas = table_grid(self.table(problem), timesteps)
        with torch.no_grad():
            x = y + sigmas[0] * problem.randn()
        for i in problem.iterate(range(len(timesteps)), self.name):
            x, x0 = self.step(problem, x, y, sigmas[i], sigmas[i + 1], self.guided(timesteps[i]))
            problem.report(i, sigmas[i], x, x0)
        return x
