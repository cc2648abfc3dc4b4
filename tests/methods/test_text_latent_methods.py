"""TReg and P2L against closed forms on an analytic text-conditioned latent prior.

The prior (:mod:`tests.helpers.text_mixture`) is a Gaussian mixture in a 2-d latent space whose
component weights are ``softmax(c)`` of the text embedding ``c``, behind a linear orthonormal
"autoencoder"; posteriors are exact mixtures.  References: TReg-inverse/TReg,
``solver/latent_diffusion.py`` (``TRegSolver.data_consistency`` / ``sample``, ``P2LSolver``).
"""

from __future__ import annotations

import pytest
import torch

from invsolve import methods, solve
from invsolve.commands.list import method_lines
from invsolve.samplers import Problem
from invsolve.samplers.text_guidance import consistent_image, leading_timesteps, sd_ddim_levels
from operators import MatrixOperator
from tests.helpers.linear_latent import LinearLatentPrior
from tests.helpers.posterior_problems import sliced_wasserstein
from tests.helpers.text_mixture import F64, four_corner_prior

SAMPLES = 400


def test_leading_timesteps_are_diffusers_ddim_leading_spacing():
    from diffusers import DDIMScheduler

    for steps in (200, 300, 50, 7):
        for offset in (0, 1):
            scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=offset)
            scheduler.set_timesteps(steps)
            assert [t + offset for t in leading_timesteps(1000, steps)] == scheduler.timesteps.tolist()
    assert leading_timesteps(1000, 200)[:2] == [995, 990] and leading_timesteps(1000, 200)[-1] == 0
    with pytest.raises(ValueError, match="between 1 and the prior's 100"):
        leading_timesteps(100, 101)


def test_sd_levels_are_those_of_the_treg_repository_loop():
    """``TReg-inverse/TReg`` builds ``DDIMScheduler`` from SD v1.5's config (``steps_offset`` 1),
    prepends 1 to ``alphas_cumprod`` and reads ``at = alphas_cumprod[t]`` for the UNet's ``t``
    (the scheduler gives the timesteps; both use the prior's own table)."""
    from diffusers import DDIMScheduler

    prior = four_corner_prior()
    scheduler = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, set_alpha_to_one=False)
    scheduler.set_timesteps(200)
    abar = 1 / (1 + prior.sigmas**2)
    shifted = torch.cat([torch.ones(1, dtype=F64), abar])
    state = [float(((1 - shifted[t]) / shifted[t]).sqrt()) for t in scheduler.timesteps]
    asked = [float(prior.sigmas[t]) for t in scheduler.timesteps]
    problem = Problem(y=torch.zeros(1, 1, dtype=F64), operator=None, prior=prior, x_shape=(1, 2), noise_sigma=0.0,
                      steps=200, generator=torch.Generator())
    levels, network = sd_ddim_levels(problem)
    assert levels[-1] == 0.0 and len(network) == 200
    torch.testing.assert_close(torch.tensor(levels[:-1]), torch.tensor(state), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(network), torch.tensor(asked), rtol=1e-6, atol=0)


@pytest.mark.parametrize("lam", [1e-4, 0.3])
def test_data_consistency_is_the_closed_form_prox(lam):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 8, generator=g, dtype=F64)
    op = MatrixOperator(A)
    x0 = torch.randn(3, 8, generator=g, dtype=F64)
    y = torch.randn(3, 5, generator=g, dtype=F64)
    exact = torch.linalg.solve(A.T @ A + lam * torch.eye(8, dtype=F64), (y @ A + lam * x0).T).T
    for solver, iterations in (("cg", 8), ("prox", 0)):
        torch.testing.assert_close(consistent_image(op, x0, y, lam, iterations, solver), exact, rtol=1e-7, atol=1e-7)
    assert not torch.allclose(consistent_image(op, x0, y, lam, 2), exact, rtol=1e-3, atol=1e-3)
    # Orthonormal rows (masks, normalised SR): CG from x0 starts with a residual A^T (y - A x0) in
    # one eigenspace of A^T A, so TReg's 5 iterations (already the first) are exact.
    rows, _ = torch.linalg.qr(torch.randn(8, 5, generator=g, dtype=F64))
    op = MatrixOperator(rows.T)
    exact = x0 + (y - x0 @ rows) @ rows.T / (1 + lam)
    torch.testing.assert_close(consistent_image(op, x0, y, lam, 5), exact, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="unknown data-consistency solver"):
        consistent_image(op, x0, y, lam, 5, "adam")


def test_treg_data_consistency_step_reaches_the_exact_prox():
    """With consistency at every step, the last one (to sigma = 0) returns ``z0y = E(x_y)``:
    ``Q^T (A^T A + lam I)^{-1} (A^T y + lam Q z0)`` for the guided ``z0`` of that step."""
    prior = four_corner_prior()
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = (prior.decode(torch.tensor([[2.0, -2.0]], dtype=F64)) @ A.T) + 0.1
    states = []
    solve(y, MatrixOperator(A), prior, method="treg", steps=8, seed=0, num_samples=3, noise_sigma=0.1,
          progress=False, prompt="component 1", null_prompt="", adaptive_negation=False,
          consistency_every=1, consistency_until=1.0, callback=states.append)
    last = states[-1]
    lam = 1e-4
    x0 = prior.decode(last["denoised"])
    exact = torch.linalg.solve(A.T @ A + lam * torch.eye(3, dtype=F64), (y @ A + lam * x0).T).T
    torch.testing.assert_close(last["x"], prior.encode(exact), rtol=1e-9, atol=1e-9)
    assert (last["x"] - last["denoised"]).abs().max() > 1e-3


def text_regularised_fractions(prompt: str, guidance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TReg on a measurement of ``z_1 = 2`` only, which components 0 (2, 2) and 1 (2, -2) both
    explain: the fraction of samples nearest each component, the exact posterior weights
    under the prompted prior ``p(z | c)``, and the samples."""
    prior = four_corner_prior()
    A = prior.Q[:, :1].T.clone()
    noise = 0.1
    y = torch.tensor([[2.0]], dtype=F64) + noise * torch.randn(1, 1, generator=torch.Generator().manual_seed(0),
                                                                dtype=F64)
    result = solve(y, MatrixOperator(A), prior, method="treg", steps=60, seed=0, num_samples=SAMPLES,
                   noise_sigma=noise, progress=False, prompt=prompt, null_prompt="", adaptive_negation=False,
                   guidance_scale=guidance)
    z = prior.encode(result.samples[:, 0])
    nearest = torch.cdist(z, prior.means).argmin(1)
    fractions = torch.stack([(nearest == k).double().mean() for k in range(4)])
    exact = prior.mixture(prior.encode_text(prompt)).posterior(A @ prior.Q, y, noise).weights
    return fractions, exact, z


def test_treg_prompt_decides_what_the_measurement_leaves_open():
    """Plain conditional guidance (w = 1) follows the exact posterior weights of the prompted
    prior (0.95 / 0.05; 0.5 / 0.5 unprompted) within 0.07 (TReg is no exact sampler: its last
    15 % of steps are unguided by the data); the official CFG weight 4 picks the prompt."""
    for prompt, winner in (("", None), ("component 0", 0), ("component 1", 1)):
        fractions, exact, z = text_regularised_fractions(prompt, 1.0)
        assert (fractions - exact).abs().max() < 0.07, (prompt, fractions, exact)
        assert abs(z[:, 0].mean().item() - 2.0) < 0.1
        if winner is not None:
            assert text_regularised_fractions(prompt, 4.0)[0][winner] > 0.99


def test_p2l_prompt_tuning_moves_the_embedding_and_the_samples_to_the_posterior():
    """A full measurement of component 1 (posterior weight > 0.999); a weak DPS step (0.02)
    alone leaves most samples elsewhere.  Tuning the embedding (toy learning rate 0.1 for
    logits of size 1; projection off to isolate it) must raise component 1's logit above the
    others in every sample and bring the samples to the posterior's component."""
    prior = four_corner_prior()
    g = torch.Generator().manual_seed(0)
    noise, target = 0.5, 1
    A = prior.Q.T.clone()
    y = (prior.means[target] + noise * torch.randn(2, generator=g, dtype=F64))[None]
    posterior = prior.mixture(prior.encode_text("")).posterior(A @ prior.Q, y, noise)
    assert posterior.weights[target] > 0.999
    exact = posterior.sample(SAMPLES, torch.Generator().manual_seed(1))
    component = prior.mixture(prior.encode_text(f"component {target}") * 1e3).sample(SAMPLES, g)
    component_gap = sliced_wasserstein(component, exact, 500, torch.Generator().manual_seed(3))
    distance, share = {}, {}
    for lr in (0.0, 0.1):
        prior.conditioned_on.clear()
        result = solve(y, MatrixOperator(A), prior, method="p2l", steps=50, seed=0, num_samples=SAMPLES,
                       noise_sigma=noise, progress=False, prompt_lr=lr, step_size=0.02, projection_every=0)
        z = prior.encode(result.samples[:, 0])
        distance[lr] = sliced_wasserstein(z, exact, 500, torch.Generator().manual_seed(3))
        share[lr] = (torch.cdist(z, prior.means).argmin(1) == target).double().mean().item()
        tuned = prior.conditioned_on[-1]
        margin = tuned[:, target] - tuned[:, [k for k in range(4) if k != target]].amax(1)
        assert (margin > 1.0).all() if lr > 0 else (margin == 0).all()
    assert share[0.1] > 0.98 and share[0.0] < 0.7, share
    # What remains is the weak step's within-component error: the tuned samples are no further
    # from the posterior than draws of the prior's component 1 itself.
    assert distance[0.1] < 1.2 * component_gap and distance[0.0] > 4 * distance[0.1], (distance, component_gap)


def test_p2l_projection_is_the_encoder_range_prox_of_the_tuned_estimate():
    """With projection at every step, the last step's ``z0`` is ``E(argmin ||y - A x||^2 +
    lam ||x - G(D(z; c*))||^2)`` for the embedding ``c*`` the DPS call used."""
    prior = four_corner_prior()
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = prior.decode(prior.means[2:3]) @ A.T
    states = []
    solve(y, MatrixOperator(A), prior, method="p2l", steps=6, seed=0, num_samples=3, noise_sigma=0.05,
          progress=False, prompt_lr=0.1, projection_every=1, projection_until=1.0, callback=states.append)
    # The last step's state is at timestep 0 and the network is asked at timestep 1 (the code's
    # steps_offset): the same VP state, x = z sqrt((1 + s1^2) / (1 + s0^2)), then Tweedie at s0.
    z, s0, s1 = states[-2]["x"], float(prior.sigmas[0]), float(prior.sigmas[1])
    x = z * ((1 + s1**2) / (1 + s0**2)) ** 0.5
    eps = (x - prior._mixture_mean(x, torch.tensor(s1, dtype=F64), prior.conditioned_on[-1])) / s1
    z0 = z - s0 * eps
    lam = 1e-4
    x0 = prior.decode(z0)
    exact = torch.linalg.solve(A.T @ A + lam * torch.eye(3, dtype=F64), (y @ A + lam * x0).T).T
    torch.testing.assert_close(states[-1]["denoised"], prior.encode(exact), rtol=1e-9, atol=1e-9)


def test_text_methods_need_a_text_conditioned_prior_and_say_so():
    prior = LinearLatentPrior(four_corner_prior().mixture(torch.zeros(4, dtype=F64)), four_corner_prior().Q)
    A = torch.eye(3, dtype=F64)[:2]
    for method in ("treg", "p2l"):
        assert "text" in methods()[method] and "latent" in methods()[method]
        assert "needs" in method_lines()[method] and "text" in method_lines()[method]
        with pytest.raises(ValueError, match=rf"method '{method}' needs text"):
            solve(torch.zeros(1, 2, dtype=F64), MatrixOperator(A), prior, method=method, steps=2, progress=False)
