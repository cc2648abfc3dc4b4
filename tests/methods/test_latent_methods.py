"""Latent methods (latent DPS, PSLD, ReSample): parity with soominkwon/resample and LituRout/PSLD
(grids, defaults, update rules transcribed in VP form), a closed-form posterior, and end to end on a
tiny latent diffusion pipeline saved and loaded here.

The exact check is the linear latent problem of :mod:`tests.helpers.linear_latent`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invsolve import solve
from invsolve.samplers import Problem
from invsolve.samplers.latent import latent_problem, ldm_ddim_levels, ldm_ddim_timesteps, minimize_rows, row_mse
from invsolve.samplers.latent_dps import LatentDPS
from invsolve.samplers.psld import PSLD, psld_step
from invsolve.samplers.resample import ReSample, resampling_fusion
from operators import FunctionOperator, Inpainting, MatrixOperator
from priors import GaussianMixturePrior, load_prior
from tests.helpers.linear_latent import F64, LinearLatentPrior, make_linear_problem
from tests.helpers.posterior_problems import sliced_wasserstein


@pytest.fixture(scope="module")
def linear_problem():
    return make_linear_problem()


def sw_to_posterior(z: torch.Tensor, posterior: GaussianMixturePrior) -> float:
    exact = posterior.sample(z.shape[0], torch.Generator().manual_seed(0))
    return sliced_wasserstein(z, exact, 500, torch.Generator().manual_seed(1))


def latent_samples(problem, method: str, samples: int, steps: int, **options) -> torch.Tensor:
    prior, op, y, noise, _ = problem
    result = solve(y, op, prior, method=method, steps=steps, seed=0, num_samples=samples,
                   noise_sigma=noise, progress=False, **options)
    return prior.encode(result.samples[:, 0])


#: (method, options, tolerance as a fraction of the prior's SW distance, options without guidance).
#: Measured with the official deterministic DDIM (eta 0): latent DPS 0.060, PSLD 0.073 (eta 1: 0.010);
#: without guidance 1.08.
EXACT_CASES = [
    ("latent_dps", {"omega": 0.3}, 0.1, {"omega": 0.0}),
    ("psld", {"omega": 0.3, "gamma": 0.3}, 0.1, {"omega": 0.0, "gamma": 0.0}),
    ("resample", {"interval": 5, "pixel_max_iters": 200, "latent_max_iters": 100}, 0.8,
     {"interval": 10**6, "dps_step_size": 0.0, "latent_max_iters": 0}),
]


@pytest.mark.parametrize("method, options, tolerance, broken", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_latent_methods_land_near_the_exact_posterior(linear_problem, method, options, tolerance, broken) -> None:
    """Within ``tolerance`` of the posterior in sliced Wasserstein distance, relative to the
    prior's distance; the same method without its guidance misses it."""
    prior, _, _, _, posterior = linear_problem
    samples, steps = (200, 40) if method != "resample" else (150, 60)
    reference = sw_to_posterior(prior.latent.sample(samples, torch.Generator().manual_seed(3)), posterior)
    assert reference > 5
    good = sw_to_posterior(latent_samples(linear_problem, method, samples, steps, **options), posterior)
    bad = sw_to_posterior(latent_samples(linear_problem, method, samples, steps, **broken), posterior)
    assert good < tolerance * reference, (good, reference)
    assert bad > tolerance * reference, (bad, reference)


def test_resampling_fusion_is_the_gaussian_product() -> None:
    """Mean and variance of ``N(z0_y, s^2) x N(z'; z, tau^2)`` by precision weighting."""
    z0_y, z_prior = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64)
    sigma, s, gamma = 2.0, 1.5, 40.0
    tau2 = gamma * s**2 * (sigma**2 - s**2) / sigma**2
    precision = 1 / s**2 + 1 / tau2
    mean, std = resampling_fusion(z0_y, z_prior, sigma, s, gamma)
    torch.testing.assert_close(mean, (z0_y / s**2 + z_prior / tau2) / precision)
    assert math.isclose(std, precision**-0.5, rel_tol=1e-12)
    unchanged, zero = resampling_fusion(z0_y, z_prior, sigma, s, 0.0)
    assert zero == 0 and torch.equal(unchanged, z_prior)


def test_per_sample_minimiser_reaches_the_consistent_set_row_by_row() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 6, generator=g, dtype=F64)
    y = torch.randn(2, 3, generator=g, dtype=F64)
    init = torch.randn(2, 6, generator=g, dtype=F64)
    both = minimize_rows(lambda x: row_mse(y - x @ A.T), init, 1e-2, 3000, 1e-8, 0.0)
    assert row_mse(y - both @ A.T).max() < 1e-6
    alone = minimize_rows(lambda x: row_mse(y[:1] - x @ A.T), init[:1], 1e-2, 3000, 1e-8, 0.0)
    torch.testing.assert_close(both[:1], alone, rtol=0, atol=1e-12)


def official_adamw_loop(loss_fn, init, lr, max_iters, eps, patience=None):
    """ReSample's ldm/models/diffusion/ddim.py ``pixel_optimization`` / ``latent_optimization`` loop:
    loss, backward, AdamW step, then the stopping checks (``break`` after the step)."""
    var = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([var], lr=lr)
    losses = []
    for itr in range(max_iters):
        optimizer.zero_grad()
        loss = loss_fn(var)
        loss.backward()
        optimizer.step()
        current = float(loss.detach())
        if patience is not None:
            losses.append(current)
            if itr >= patience:
                if losses[0] < current:
                    break
                losses.pop(0)
        if current < eps**2:
            break
    return var.detach()


@pytest.mark.parametrize("patience, eps", [(None, 0.3), (5, 1e-3)])
def test_minimiser_is_resamples_adamw_loop(patience, eps) -> None:
    g = torch.Generator().manual_seed(6)
    A = torch.randn(3, 6, generator=g, dtype=F64)
    y = torch.randn(1, 3, generator=g, dtype=F64)
    init = torch.randn(1, 6, generator=g, dtype=F64)
    ours = minimize_rows(lambda x: row_mse(y - x @ A.T), init, 1e-2, 400, eps**2, 0.01, patience)
    theirs = official_adamw_loop(lambda x: ((y - x @ A.T) ** 2).mean(), init, 1e-2, 400, eps, patience)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def vp_eps_model(latent: GaussianMixturePrior):
    """The exact latent mixture as an epsilon-network on VP states: ``eps(x_vp, t)``."""
    def eps(x_vp, t):
        a = float(latent.alphas_cumprod[t])
        sigma = math.sqrt((1 - a) / a)
        x = x_vp / math.sqrt(a)
        return (x - latent.denoise(x, torch.full((x.shape[0],), sigma, dtype=F64))) / sigma
    return eps


def test_ddim_grid_is_compvis_make_ddim_timesteps() -> None:
    # ldm/modules/diffusionmodules/util.py make_ddim_timesteps("uniform"): range(0, T, T // S) + 1;
    # make_ddim_sampling_parameters: alphas = abar[ts], alphas_prev = [abar[0]] + abar[ts[:-1]];
    # LituRout/PSLD's copy subtracts 1 from the alpha indices when ts[-1] == len(ts) (S = T).
    assert ldm_ddim_timesteps(1000, 500) == list(range(999, 0, -2))
    assert ldm_ddim_timesteps(1000, 1000) == list(range(1000, 0, -1))
    prior, _, y, noise, _ = make_linear_problem(table=True)
    table = prior.sigmas

    def levels(steps):
        problem = Problem(y=y, operator=None, prior=prior, x_shape=(1, 8), noise_sigma=noise, steps=steps,
                          generator=torch.Generator())
        return ldm_ddim_levels(problem)

    state, net = levels(500)
    ts = np.arange(0, 1000, 2) + 1
    assert state == pytest.approx([float(table[t]) for t in ts[::-1]] + [float(table[0])], rel=1e-12)
    assert net == state[:-1]
    state, net = levels(1000)
    assert state == pytest.approx([float(table[t]) for t in range(999, -1, -1)] + [float(table[0])], rel=1e-12)
    assert net == pytest.approx([float(table[999])] + [float(table[t]) for t in range(999, 0, -1)], rel=1e-12)


@pytest.mark.parametrize("method, steps", [("resample", 50), ("psld", 1000), ("latent_dps", 100)])
def test_latent_methods_visit_the_official_levels(method, steps) -> None:
    prior, op, y, noise, _ = make_linear_problem(table=True)
    seen = []
    options = {"interval": 10**6} if method == "resample" else {}
    solve(y, op, prior, method=method, steps=steps, seed=0, noise_sigma=noise, progress=False,
          callback=lambda state: seen.append(state["sigma"]), **options)
    ts = [t + 1 for t in range(0, 1000, 1000 // steps)][::-1]
    alpha_ts = [t - 1 for t in ts] if ts[0] == 1000 else ts
    assert seen == pytest.approx([float(prior.sigmas[t]) for t in alpha_ts], rel=1e-12)


def linear_latent_problem(steps: int) -> Problem:
    prior, op, y, noise, _ = make_linear_problem(table=True)
    return Problem(y=y, operator=op, prior=prior, x_shape=(1, 12), noise_sigma=noise, steps=steps,
                   generator=torch.Generator().manual_seed(0))


def official_resample_step(eps, A, Q, y, x_vp, t, a_t, a_prev, scale):
    """ddim.py ``p_sample_ddim`` (eta 0) then condition_methods.py ``PosteriorSampling.conditioning``
    with ``scale = a_t * .5``: returns ``img`` (VP) and ``pseudo_x0``."""
    x = x_vp.clone().requires_grad_(True)
    e_t = eps(x, t)
    pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
    x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t
    pseudo_x0 = (x - math.sqrt(1 - a_t) ** 2 * e_t) / math.sqrt(a_t)
    norm = torch.linalg.norm(y - (pseudo_x0 @ Q.T) @ A.T)
    (grad,) = torch.autograd.grad(norm, x)
    return (x_prev - grad * scale).detach(), pseudo_x0.detach()


def test_resample_dps_step_is_the_official_one() -> None:
    problem = linear_latent_problem(500)
    latent = latent_problem(problem)
    prior, A = problem.prior, problem.operator.A
    levels, net = ldm_ddim_levels(latent)
    eps = vp_eps_model(prior.latent)
    abar = prior.latent.alphas_cumprod
    i = 120
    t, t_prev = 999 - 2 * i, 999 - 2 * (i + 1)
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(1), dtype=F64) * 3
    ours, _ = ReSample()._guided_step(problem, latent, z, (levels[i], levels[i + 1], net[i]))
    x_vp = z * math.sqrt(float(abar[t]))
    theirs, _ = official_resample_step(eps, A, prior.Q, problem.y, x_vp, t, float(abar[t]), float(abar[t_prev]),
                                       float(abar[t]) * 0.5)
    torch.testing.assert_close(ours * math.sqrt(float(abar[t_prev])), theirs, rtol=1e-9, atol=1e-10)


def test_resample_lookahead_is_the_official_time_travel() -> None:
    """resample_sampling: ``for k in range(i, min(i + 5, len(timesteps) - 1))`` calls p_sample_ddim at
    timestep ``reversed(timesteps)[k + 1]`` with the alphas of ``index_ = total - k - 1``."""
    problem = linear_latent_problem(500)
    latent = latent_problem(problem)
    prior = problem.prior
    levels, net = ldm_ddim_levels(latent)
    eps, abar = vp_eps_model(prior.latent), prior.latent.alphas_cumprod
    rev = list(range(999, 0, -2))  # reversed(ddim_timesteps)
    alphas = {index: float(abar[rev[499 - index]]) for index in range(500)}  # ddim_alphas[index]
    alphas_prev = {index: float(abar[rev[500 - index]]) if index > 0 else float(abar[0]) for index in range(500)}
    i = 166
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(2), dtype=F64) * 2  # VE at levels[i + 1]
    img = z * math.sqrt(float(abar[rev[i + 1]]))
    for k in range(i, min(i + 5, 499)):
        index_ = 500 - k - 1
        a_t, a_prev = alphas[index_], alphas_prev[index_]
        e_t = eps(img, rev[k + 1])
        pred_x0 = (img - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        pseudo_x0 = (img - math.sqrt(1 - a_t) ** 2 * e_t) / math.sqrt(a_t)
        img = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t
    ours = ReSample()._lookahead(latent, z, i, levels, net)
    torch.testing.assert_close(ours, pseudo_x0, rtol=1e-9, atol=1e-10)


def test_stochastic_resample_is_the_official_formula() -> None:
    # ddim.py stochastic_resample(pseudo_x0, x_t, a_t=a_prev, sigma=40 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev))
    a_t, a_prev = 0.3, 0.4
    z0, x_t = torch.tensor([[0.7, -1.2]], dtype=F64), torch.tensor([[1.5, 0.2]], dtype=F64)
    s_r = 40 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    mean_vp = (s_r * math.sqrt(a_prev) * z0 + (1 - a_prev) * x_t) / (s_r + 1 - a_prev)
    std_vp = math.sqrt(1 / (1 / s_r + 1 / (1 - a_prev)))
    sigma, sigma_next = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_prev) / a_prev)
    mean, std = resampling_fusion(z0, x_t / math.sqrt(a_prev), sigma, sigma_next, 40.0)
    torch.testing.assert_close(mean * math.sqrt(a_prev), mean_vp, rtol=1e-12, atol=1e-12)
    assert std * math.sqrt(a_prev) == pytest.approx(std_vp, rel=1e-12)


def test_psld_step_is_the_official_one() -> None:
    """psld.py ``p_sample_ddim`` (general_inverse branch, eta 0, noiser off) for one step at S = T = 1000:
    alphas of timestep t, network at t + 1; ``z_prev - grad(gamma ||E(glued) - z0|| + omega ||A G(z0) - y||)``."""
    problem = linear_latent_problem(1000)
    prior, op, A, Q = problem.prior, problem.operator, problem.operator.A, problem.prior.Q
    eps, abar = vp_eps_model(prior.latent), prior.latent.alphas_cumprod
    omega, gamma, t = 0.7, 0.2, 400  # step index 999 - t
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = (z * math.sqrt(float(abar[t]))).requires_grad_(True)
    e_t = eps(x, t + 1)
    a_t, a_prev = float(abar[t]), float(abar[t - 1])
    pred_z0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
    z_prev = math.sqrt(a_prev) * pred_z0 + math.sqrt(1 - a_prev) * e_t
    image = pred_z0 @ Q.T
    meas_error = torch.linalg.norm(image @ A.T - problem.y)
    glued = problem.y @ A + image - (image @ A.T) @ A
    error = gamma * torch.linalg.norm(glued @ Q - pred_z0) + omega * meas_error
    (grad,) = torch.autograd.grad(error, x)
    theirs = (z_prev - grad).detach() / math.sqrt(a_prev)
    latent = latent_problem(problem)
    levels, net = ldm_ddim_levels(latent)
    i = 999 - t
    assert (levels[i], net[i]) == pytest.approx((math.sqrt((1 - a_t) / a_t), math.sqrt(1 / float(abar[t + 1]) - 1)))
    ours, _ = psld_step(problem, latent, z, (levels[i], levels[i + 1], net[i]), (omega, gamma), residual_noise=False,
                        adjoint_y=op.adjoint(problem.y))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


#: ReSample on 10 steps: consistency at index 6, 4 (pixel stage: index >= 10 // 3) and 2 (latent stage).
RESAMPLE_SMALL = {"interval": 2, "lookahead_steps": 2, "pixel_max_iters": 20, "latent_max_iters": 10,
                  "latent_patience": 5}
END_TO_END = [
    ("latent_dps", 4, {}, 4, 4, 0),
    ("psld", 4, {}, 4, 4, 4),
    ("resample", 10, RESAMPLE_SMALL, 10 + 3 * 2, None, 2),
]


@pytest.mark.parametrize("layout", ["ldm-vq", "sd"])
@pytest.mark.parametrize("method, steps, options, nfe, decodes, encodes", END_TO_END, ids=[c[0] for c in END_TO_END])
def test_latent_methods_run_end_to_end_on_a_saved_pipeline(latent_pipelines, layout, method, steps, options, nfe,
                                                           decodes, encodes) -> None:
    prior = load_prior(latent_pipelines[0] / layout)
    op = Inpainting("box", size=8, shape=(16, 16))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op.measure(x, 0.05, torch.Generator().manual_seed(1))
    result = solve(y, op, prior, method=method, steps=steps, seed=3, noise_sigma=0.05, progress=False, **options)
    again = solve(y, op, prior, method=method, steps=steps, seed=3, noise_sigma=0.05, progress=False, **options)
    assert result.image.shape == (1, 3, 16, 16) and torch.isfinite(result.image).all()
    torch.testing.assert_close(result.image, again.image, rtol=0, atol=0)
    assert result.nfe == nfe
    per_solve_decodes = prior.decode_calls / 2
    if decodes is not None:
        assert per_solve_decodes == decodes + 1
    assert prior.encode_calls / 2 == encodes
    assert (result.decoder_calls, result.encoder_calls) == (per_solve_decodes, encodes)


def test_defaults_are_the_official_settings() -> None:
    # soominkwon/resample: sample_condition.py ddim_steps 500, ddim_eta 0; ddim.py resample_sampling: scale
    # a_t * .5, every 10 steps, inter_timesteps 5, splits 3, sigma factor 40; pixel_optimization AdamW lr 1e-2,
    # eps 1e-3, 2000 iterations; latent_optimization lr 5e-3, eps 1e-3, 500 iterations, 200-step patience.
    resample = ReSample()
    assert ReSample.default_steps == 500
    assert (resample.dps_step_size, resample.interval, resample.lookahead_steps, resample.splits, resample.gamma) == (
        0.5, 10, 5, 3, 40.0)
    assert (resample.pixel_lr, resample.pixel_max_iters, resample.pixel_tolerance) == (1e-2, 2000, 1e-6)
    assert (resample.latent_lr, resample.latent_max_iters, resample.latent_tolerance, resample.latent_patience) == (
        5e-3, 500, 1e-6, 200)
    assert resample.weight_decay == 0.01  # torch.optim.AdamW's default, which both loops keep
    # LituRout/PSLD stable-diffusion/scripts/inverse.py: ddim_steps 1000, ddim_eta 0.0; run/*.sh weights
    assert (PSLD.default_steps, PSLD().eta, LatentDPS.default_steps, LatentDPS().eta) == (1000, 0.0, 1000, 0.0)
    prior, op, y, noise, _ = make_linear_problem()

    def weights(operator, text=False):
        p = type("Text", (LinearLatentPrior,), {"text_conditioned": text})(prior.latent, prior.Q)
        options = solve(y, operator, p, method="psld", steps=1, seed=0, noise_sigma=noise, progress=False).options
        return options["omega"], options["gamma"]

    sr = type("SR", (MatrixOperator,), {"kind": "super_resolution"})(op.A)
    blur = type("Blur", (MatrixOperator,), {"kind": "blur", "task": "motion_blur"})(op.A)
    box = type("Box", (MatrixOperator,), {"kind": "inpainting", "task": "box_inpainting"})(op.A)
    assert weights(blur) == (0.1, 0.1) and weights(sr) == (0.9, 0.1)  # run/inverse_*_ldm.sh, inverse_sr_ldm.sh
    assert weights(sr, text=True) == (1.0, 0.1) and weights(box, text=True) == (0.1, 0.01)  # inverse.sh, inverse_bip.sh
    with pytest.warns(UserWarning, match="psld has no defaults for task 'matrix'"):
        assert weights(op) == (1.0, 0.1)  # no script: scripts/inverse.py's defaults


def test_resample_ends_with_a_latent_optimisation(linear_problem) -> None:
    """resample_sampling's last statement: latent_optimization from the final state, then decoded
    (sample_condition.py); written out with the official loop above."""
    prior, op, y, noise, _ = linear_problem
    states = []
    result = solve(y, op, prior, method="resample", steps=6, seed=0, noise_sigma=noise, progress=False,
                   interval=10**6, callback=lambda state: states.append(state["x"]))
    Q, A = prior.Q, op.A
    fitted = official_adamw_loop(lambda z: ((y - (z @ Q.T) @ A.T) ** 2).mean(), states[-1], 5e-3, 500, 1e-3, 200)
    torch.testing.assert_close(result.image, fitted @ Q.T, rtol=1e-9, atol=1e-10)
    assert (fitted @ Q.T @ A.T - y).norm() < (states[-1] @ Q.T @ A.T - y).norm()


def test_latent_methods_reject_pixel_priors_and_psld_needs_an_adjoint(linear_problem) -> None:
    prior, op, y, noise, _ = linear_problem
    with pytest.raises(ValueError, match="method 'psld' needs latent"):
        solve(y, op, prior.latent, method="psld", steps=2, progress=False)
    black_box = FunctionOperator(lambda x: x @ op.A.T)
    with pytest.raises(ValueError, match="method 'psld' needs adjoint.*latent_dps"):
        solve(y, black_box, prior, method="psld", steps=2, progress=False, x_shape=(1, 12))
