"""P2L: prompt-tuning latent diffusion models for inverse problems."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.latent import latent_problem, row_mse
from invsolve.samplers.text_guidance import (
    CONSISTENCY_SOLVERS,
    consistent_image,
    latent_residual_gradient,
    network_estimate,
    on_schedule,
    per_row,
    sd_ddim_levels,
    text_prior,
)
from invsolve.samplers.updates import ddim_step, ve_step_factor, vp_start_std


@register
@dataclass
class P2L(Method):
    r"""Prompt tuning for latent diffusion inverse solvers (Chung, Ye, Milanfar & Delbracio,
    "Prompt-tuning latent diffusion models for inverse problems", ICML 2024, arXiv:2310.01110).

    Official code: none released that we know of.  This follows the paper's alternating updates
    and takes its numbers and DDIM loop from the P2L baseline of the TReg repository
    (``TReg-inverse/TReg``, ``solver/latent_diffusion.py``, ``P2LSolver``, by a shared author; grid
    :func:`~invsolve.samplers.text_guidance.sd_ddim_levels`).  With the text embedding ``c`` of
    every row (initialised from ``prompt``), decoder ``G`` and encoder ``E``, each DDIM step
    (eta 0):

    1. prompt tuning: ``prompt_iterations`` Adam steps (``prompt_lr``, one optimiser over the
       whole solve) on ``c`` minimising ``mean (y - A G(z0(z; c)))^2`` per row at the current ``z``;
    2. a latent DPS step with the tuned ``c*``
       (:func:`~invsolve.samplers.text_guidance.network_estimate`):
       ``z' = DDIM(z0) - step_size sqrt((1+sigma^2)(1+sigma'^2)) grad_z ||y - A G(z0)||``
       (the baseline's VP step 1, converted to VE);
    3. on the projection schedule, before the DDIM step, ``z0 = E(x*)`` with
       ``x* = argmin ||y - A x||^2 + lambda ||x - G(z0)||^2``
       (:func:`~invsolve.samplers.text_guidance.consistent_image`).

    The result is ``G(z0)`` of the last step.  Defaults from the baseline: 200 steps, Adam 1e-4,
    one Adam step per DDIM step, DPS step 1, eta 0.  ``prompt=None`` takes the prior's prompt.

    Deviations from the TReg repository's baseline:

    * the projection, which the baseline leaves out, uses TReg's schedule and weight for the
      same step (every 3rd step over the first 85 %, ``lambda`` 1e-4, 5 CG iterations), as the
      paper's values could not be read offline; ``projection_every=0`` turns it off, ``1``
      projects at every step;
    * sampling uses the tuned embedding itself (``guidance_scale`` 1, the paper's
      ``eps(z_t, t, c*)``); the baseline guides with ``solve.py``'s ``--cfg_guidance`` (4) against
      the null prompt, and at 1 its ``predict_noise`` would feed the null text instead of ``c*``.
      Any other ``guidance_scale`` guides against ``null_prompt``.
    """

    name = "p2l"
    needs = ("vjp", "adjoint", "latent", "text")
    default_steps = 200
    cost = (
        "prompt_iterations + 1 network calls with as many decoder passes and backprops through decoder and "
        "UNet per step; on projection steps also 1 encoder pass and up to cg_iterations A^T A applications"
    )
    summary = "prompt-tuning latent diffusion: Adam on the text embedding, latent DPS, encoder-range projection"

    prompt: str | None = None
    prompt_lr: float = 1e-4
    prompt_iterations: int = 1
    step_size: float = 1.0
    eta: float = 0.0
    guidance_scale: float = 1.0
    null_prompt: str = ""
    projection_every: int = 3
    projection_until: float = 0.85
    cg_lambda: float = 1e-4
    cg_iterations: int = 5
    consistency: str = "cg"

    def resolved(self, problem: Problem) -> P2L:
        text_prior(problem, self.name)
        if self.consistency not in CONSISTENCY_SOLVERS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_SOLVERS)}, got {self.consistency!r}")
        if self.prompt_lr < 0 or self.prompt_iterations < 0 or self.cg_lambda <= 0 or self.projection_every < 0:
            raise ValueError(
                "p2l needs prompt_lr >= 0, prompt_iterations >= 0, cg_lambda > 0 and projection_every >= 0"
            )
        return self

    def run(self, problem: Problem) -> Tensor:
        prior = text_prior(problem, self.name)
        latent = latent_problem(problem)
        rows, dtype = problem.y.shape[0], problem.y.dtype
        prompt = prior.prompt if self.prompt is None else self.prompt
        embeds = per_row(prior.encode_text(prompt), rows, dtype).requires_grad_(True)
        optimizer = torch.optim.Adam([embeds], lr=self.prompt_lr)
        null = prior.encode_text(self.null_prompt).to(dtype)
        levels, network = sd_ddim_levels(latent)
        z = vp_start_std(latent, levels[0]) * latent.randn()
        for i in latent.iterate(range(len(network)), self.name):
            sigma, sigma_next, sigma_net = levels[i], levels[i + 1], network[i]
            self._tune_prompt(problem, optimizer, embeds, z, sigma, sigma_net)
            with prior.text_conditioning(embeds.detach(), null, self.guidance_scale):
                z0, eps, x0, grad = latent_residual_gradient(problem, z, sigma, sigma_net)
            with torch.no_grad():
                if on_schedule(i, len(network), self.projection_every, self.projection_until):
                    x_star = consistent_image(problem.operator, x0, problem.y, self.cg_lambda, self.cg_iterations,
                                              self.consistency)
                    z0 = prior.encode(x_star)
                z = ddim_step(z0, eps, sigma, sigma_next, self.eta, latent.randn)
                z = z - self.step_size * ve_step_factor(sigma, sigma_next) * grad
            latent.report(i, sigma, z, z0)
        with torch.no_grad():
            return prior.decode(z0)

    def _tune_prompt(self, problem: Problem, optimizer: torch.optim.Optimizer, embeds: Tensor, z: Tensor,
                     sigma: float, sigma_net: float) -> None:
        """Step 1: Adam steps on the embeddings (in place) against the per-sample mean squared residual."""
        prior = problem.prior
        for _ in range(self.prompt_iterations):
            optimizer.zero_grad()
            with torch.enable_grad(), prior.text_conditioning(embeds, embeds, 1.0):
                z0, _ = network_estimate(problem, z.detach(), sigma, sigma_net)
                row_mse(problem.y - problem.operator(prior.decode(z0))).sum().backward()
            optimizer.step()
