"""TReg: regularization by texts for latent diffusion inverse solvers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Method, Problem, register
from invsolve.samplers.latent import latent_problem
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
from invsolve.samplers.updates import ddim_step, vp_start_std
from priors.clip_image import DEFAULT_CLIP_MODEL, load_clip_image_encoder


def negated_null_text(null_embeds: Tensor, image_features: Tensor, lr: float, iterations: int) -> Tensor:
    r"""TReg's adaptive negation: ``iterations`` Adam steps (Kingma & Ba, 2015; a fresh optimiser
    each call, learning rate ``lr``) on the null-text embedding ``u`` (rows, tokens, width) that
    lower the mean similarity of its tokens to the unit-normalised CLIP image features ``f`` of
    each row, ``loss = sum_rows mean_tokens <f, u_token>``.  Adam is elementwise, so the rows
    do not interact."""
    if image_features.shape[-1] != null_embeds.shape[-1]:
        raise ValueError(
            f"the CLIP image encoder gives {image_features.shape[-1]}-wide features but the text embeddings "
            f"are {null_embeds.shape[-1]} wide; use the CLIP model that matches the text encoder "
            "(openai/clip-vit-large-patch14 for Stable Diffusion v1.x)"
        )
    features = image_features.detach() / image_features.detach().norm(dim=1, keepdim=True)
    null = null_embeds.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([null], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            optimizer.zero_grad()
            similarity = torch.einsum("nw,ntw->nt", features.to(null.dtype), null)
            similarity.mean(dim=1).sum().backward()
            optimizer.step()
    return null.detach()


@register
@dataclass
class TReg(Method):
    r"""Regularization by texts, TReg (Kim, Park, Chung & Ye, "Regularization by Texts for Latent
    Diffusion Inverse Solvers", ICLR 2025).

    Official code: TReg-inverse/TReg (``solver/latent_diffusion.py``, ``TRegSolver``, run by
    ``solve.py``).  On a text-conditioned latent prior (Stable Diffusion) with decoder ``G`` and
    encoder ``E``, DDIM (eta 0) over the official loop's timesteps
    (:func:`~invsolve.samplers.text_guidance.sd_ddim_levels`: "leading" timesteps, the UNet asked
    one timestep above each state's noise level, start ``N(0, I)`` in VP).  Every
    ``consistency_every``-th step before ``consistency_until * steps`` (``i % 3 == 0 and i < 170``
    of 200 there):

    1. ``eps`` and ``z0 = z - sigma eps`` (:func:`~invsolve.samplers.text_guidance.network_estimate`)
       with classifier-free guidance ``w`` between the prompt and the (negated) null text;
    2. ``x_y = argmin ||y - A x||^2 + lambda ||x - G(z0)||^2`` by ``cg_iterations`` CG steps from
       ``G(z0)`` (:func:`~invsolve.samplers.text_guidance.consistent_image`), ``z0y = E(x_y)``;
    3. adaptive negation (:func:`negated_null_text`) of the null text against the CLIP image
       features of ``x_y``;
    4. with ``abar' = 1 / (1 + sigma'^2)``, ``zb = abar' z0y + (1 - abar') z0`` renoised as the
       official VP update, in VE ``z' = zb + sigma' / sqrt(1 + sigma'^2) (sigma' eps + n)``.

    Other steps are guided DDIM, or with ``use_dps`` the official DPS option: the null-text
    estimate (guidance 0) and its DDIM step minus ``dps_step`` (default ``sqrt(abar')`` in VP,
    ``sqrt(1 + sigma^2)`` in VE) times the gradient of ``||y - A G(z0)||``.  The result is
    ``G(z0)`` of the last step.  Defaults are the official commands': 200 steps,
    ``guidance_scale`` 4 (``solve.py``; its README examples pass 5), ``null_prompt`` "out of focus,
    depth of field" with adaptive negation (every README command; ``solve.py``'s own defaults are
    "" and off), ``negation_lr`` 8e-4 (``solve.py``; the README varies it from 5e-4 to 1e-3 per
    image), 10 Adam steps, ``cg_lambda`` 1e-4 with 5 CG iterations.  ``prompt=None`` takes the
    prior's prompt; ``clip_model`` names the CLIP image encoder (officially OpenAI's ViT-L/14),
    loaded by :func:`priors.clip_image.load_clip_image_encoder`.  NFE counts guided denoiser calls
    (two UNet passes each when ``guidance_scale`` is not 0 or 1).

    Deviations from the official code:

    * the encoder returns the KL posterior mean (the code samples it);
    * CG stops early on a relative residual of 1e-6 (not an absolute 1e-4);
    * samples are independent rows (the official script solves one image at a time);
    * option ``consistency="prox"``: the operator's exact prox instead of 5 CG iterations (with
      lambda 1e-4 it amplifies noise where A's singular values are small).
    """

    name = "treg"
    needs = ("adjoint", "latent", "text")
    default_steps = 200
    cost = (
        "1 guided network call (2 UNet passes under CFG) per step; on consistency steps also 1 decoder pass, "
        "cg_iterations A^T A applications, 1 encoder pass and 1 CLIP image encoding with negation_iterations "
        "Adam steps; use_dps steps add 1 decoder pass and 1 backprop through decoder and UNet"
    )
    summary = ("regularization by texts: prompt CFG, CG data consistency on decoded images, "
               "adaptive negation (needs a CLIP image encoder, clip_model)")

    prompt: str | None = None
    null_prompt: str = "out of focus, depth of field"
    guidance_scale: float = 4.0
    consistency_every: int = 3
    consistency_until: float = 0.85
    cg_lambda: float = 1e-4
    cg_iterations: int = 5
    consistency: str = "cg"
    adaptive_negation: bool = True
    negation_lr: float = 8e-4
    negation_iterations: int = 10
    clip_model: str = DEFAULT_CLIP_MODEL
    use_dps: bool = False
    dps_step: float | None = None

    def resolved(self, problem: Problem) -> TReg:
        text_prior(problem, self.name)
        if self.consistency not in CONSISTENCY_SOLVERS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_SOLVERS)}, got {self.consistency!r}")
        if self.guidance_scale < 0 or self.cg_lambda <= 0 or self.consistency_every < 0:
            raise ValueError("treg needs guidance_scale >= 0, cg_lambda > 0 and consistency_every >= 0")
        return self

    def run(self, problem: Problem) -> Tensor:
        prior = text_prior(problem, self.name)
        latent = latent_problem(problem)
        rows, dtype = problem.y.shape[0], problem.y.dtype
        prompt = prior.prompt if self.prompt is None else self.prompt
        cond = prior.encode_text(prompt).to(dtype)
        null = per_row(prior.encode_text(self.null_prompt), rows, dtype)
        encoder = None
        if self.adaptive_negation and self.negation_iterations > 0:
            encoder = load_clip_image_encoder(self.clip_model, device=problem.y.device)
        levels, network = sd_ddim_levels(latent)
        z = vp_start_std(latent, levels[0]) * latent.randn()
        for i in latent.iterate(range(len(network)), self.name):
            sigma, sigma_next, sigma_net = levels[i], levels[i + 1], network[i]
            if on_schedule(i, len(network), self.consistency_every, self.consistency_until):
                z, z0, null = self._consistency_step(problem, z, (sigma, sigma_next, sigma_net), cond, null, encoder)
            elif self.use_dps:
                with prior.text_conditioning(cond, null, 0.0):
                    z0, eps, _, grad = latent_residual_gradient(problem, z, sigma, sigma_net)
                step = math.sqrt(1 + sigma**2) if self.dps_step is None else self.dps_step * math.sqrt(
                    (1 + sigma**2) * (1 + sigma_next**2))
                z = ddim_step(z0, eps, sigma, sigma_next, 0.0, None) - step * grad
            else:
                with torch.no_grad(), prior.text_conditioning(cond, null, self.guidance_scale):
                    z0, eps = network_estimate(latent, z, sigma, sigma_net)
                z = ddim_step(z0, eps, sigma, sigma_next, 0.0, None)
            latent.report(i, sigma, z, z0)
        with torch.no_grad():
            return prior.decode(z0)

    @torch.no_grad()
    def _consistency_step(self, problem: Problem, z: Tensor, levels: tuple[float, float, float], cond: Tensor,
                          null: Tensor, encoder) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-4 of the class docstring: the new latent, the guided ``z0`` and the null text."""
        prior = problem.prior
        sigma, sigma_next, sigma_net = levels
        with prior.text_conditioning(cond, null, self.guidance_scale):
            z0, eps = network_estimate(problem, z, sigma, sigma_net)
        x_y = consistent_image(problem.operator, prior.decode(z0), problem.y, self.cg_lambda, self.cg_iterations,
                               self.consistency)
        z0y = prior.encode(x_y)
        if encoder is not None:
            null = negated_null_text(null, encoder(x_y), self.negation_lr, self.negation_iterations)
        abar_next = 1 / (1 + sigma_next**2)
        blend = abar_next * z0y + (1 - abar_next) * z0
        if sigma_next <= 0:
            return blend, z0, null
        noise = problem.randn(tuple(z.shape))
        scale = sigma_next / math.sqrt(1 + sigma_next**2)
        return blend + scale * (sigma_next * eps + noise), z0, null
