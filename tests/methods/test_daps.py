"""DAPS: parity with zhangbingliang2019/DAPS (grid, defaults, Langevin rule) and exact posteriors."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from invsolve import solve
from invsolve.benchmarks import make_gmm_problem, sliced_wasserstein
from invsolve.samplers.daps import DAPS
from operators import MatrixOperator
from priors import GaussianMixturePrior, GaussianPrior
from priors.adm import linear_alphas_cumprod

F64 = torch.float64


def poly7(num: int, hi: float, lo: float) -> np.ndarray:
    """cores/scheduler.py ``EDMScheduler.get_discrete_time_steps``: ``num`` points of the poly-7 ramp."""
    r = np.linspace(0, 1, num)
    return (hi ** (1 / 7) + r * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7


def official_daps(prior, A, y, steps, ode_steps, langevin_steps, lr, tau, n, generator, half_likelihood=False):
    """sampler.py ``DAPS.sample`` with cores/mcmc.py ``MCMCSampler`` (langevin, prior_solver gaussian,
    lr_min_ratio 0.01), cores/scheduler.py ``EDMScheduler`` / ``DiffusionPFODE`` (Euler) and
    forward_operator ``Operator.gradient`` (autograd of the summed squares), transcribed in VE."""
    annealing = list(poly7(steps + 1, 100.0, 0.1)[:-1]) + [0.0]  # Scheduler.discretize, num_steps + 1

    def denoise(x, sigma):
        return prior.denoise(x, torch.full((x.shape[0],), float(sigma), dtype=F64))

    x = torch.randn(n, A.shape[1], generator=generator, dtype=F64) * 100.0
    for step in range(steps):
        sigma = annealing[step]
        times = poly7(ode_steps + 1, sigma, 0.01)
        x0hat = x
        for k in range(ode_steps):
            x0hat = x0hat + (times[k + 1] - times[k]) * (x0hat - denoise(x0hat, times[k])) / times[k]
        lr_t = (1 + step / (steps + 1) * (0.01 - 1)) * lr
        xi = x0hat.clone()
        for _ in range(langevin_steps):
            v = xi.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(((v @ A.T - y) ** 2).flatten(1).sum(-1).sum(), v)
            data_term = -grad / tau**2 * (0.5 if half_likelihood else 1.0)
            score = data_term + (x - xi) / sigma**2 + (x0hat - x) / sigma**2
            xi = xi + lr_t * score + math.sqrt(2 * lr_t) * torch.randn(xi.shape, generator=generator, dtype=F64)
        x = xi + torch.randn(xi.shape, generator=generator, dtype=F64) * annealing[step + 1]
    return x


@pytest.mark.parametrize("seed", [1, 2])
def test_langevin_rule_matches_a_transcription_of_the_official_sampler(seed):
    """Same exact mixture, same settings: invsolve is as far from the official transcription as two
    official runs are; the paper text's ``||A x - y||^2 / (2 tau^2)`` likelihood is not."""
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed, noise_sigma=0.1)
    n, steps, ode, langevin, lr, tau = 300, 20, 5, 30, 2e-3, 0.1 * math.sqrt(2)
    runs = [official_daps(prior, op.A, y, steps, ode, langevin, lr, tau, n, torch.Generator().manual_seed(10 + k))
            for k in range(3)]
    half = official_daps(prior, op.A, y, steps, ode, langevin, lr, tau, n, torch.Generator().manual_seed(20),
                         half_likelihood=True)
    ours = solve(y, op, prior, method="daps", steps=steps, num_samples=n, seed=3, noise_sigma=sigma_y,
                 progress=False, lr=lr, tau=tau, langevin_steps=langevin).samples.reshape(n, -1)

    def sw(a, b):
        return sliced_wasserstein(a, b, 500, torch.Generator().manual_seed(1))

    floor = statistics.mean([sw(runs[1], runs[0]), sw(runs[2], runs[0]), sw(runs[2], runs[1])])
    # Measured (seeds 1 / 2): invsolve 1.05 / 1.40 of the floor, half likelihood 5.9 / 2.8.
    assert statistics.mean(sw(ours, run) for run in runs) < 1.8 * floor
    assert statistics.mean(sw(half, run) for run in runs) > 1.8 * floor


def test_levels_and_ode_grid_are_the_official_ones(gmm_problem):
    # configs/sampler/edm_daps.yaml: annealing edm poly-7, 100 -> 0.1; cores/scheduler.py counts the
    # start as a step (num_steps + 1 points) and sampler.py visits the first num_steps of them.
    prior, op, y, sigma_y, _ = gmm_problem
    table_prior = GaussianMixturePrior(prior.weights, prior.means, 1.0, alphas_cumprod=linear_alphas_cumprod())
    seen = []
    result = solve(y, op, table_prior, method="daps", steps=7, noise_sigma=sigma_y, seed=0, progress=False,
                   langevin_steps=1, lr=1e-6, callback=lambda state: seen.append(state["sigma"]))
    assert seen == pytest.approx(poly7(8, 100.0, 0.1)[:7].tolist(), rel=1e-12)
    assert result.nfe == 7 * 5  # diffusion_scheduler_config num_steps 5: five Euler steps to 0.01
    calls: list[float] = []

    class Recorder:
        def denoise(self, x, sigma):
            calls.append(float(sigma))
            return x

    DAPS().ode_denoise(Recorder(), torch.zeros(1, 2, dtype=F64), 3.0)
    assert calls == pytest.approx(poly7(6, 3.0, 0.01)[:5].tolist(), rel=1e-12)  # 0.01 is the end, not a call


@pytest.mark.parametrize("task, lr", [
    ("gaussian_blur", 1e-4), ("motion_blur", 5e-5), ("super_resolution", 1e-4), ("box_inpainting", 5e-5),
    ("random_inpainting", 1e-4), ("phase_retrieval", 5e-5), ("hdr", 2e-5), ("nonlinear_blur", 1e-5),
])
def test_defaults_are_the_official_pixel_configs(gmm_problem, task, lr):
    # configs/task/{gaussian_blur,motion_blur,down_sampling,inpainting,inpainting_rand,phase_retrieval,
    # hdr,nonlinear_blur}.yaml, section "pixel": mcmc_sampler_config lr, tau 0.01, lr_min_ratio 0.01,
    # num_steps 100 (200 for nonlinear_blur); configs/sampler/edm_daps.yaml: 200 levels, 5 ODE steps.
    prior, op, y, sigma_y, _ = gmm_problem
    operator = type("Op", (MatrixOperator,), {"task": task})(op.A)
    options = solve(y, operator, prior, method="daps", steps=1, noise_sigma=sigma_y, seed=0, progress=False,
                    ode_steps=1).options
    assert options["lr"] == lr and options["tau"] == 0.01 and options["lr_min_ratio"] == 0.01
    assert options["langevin_steps"] == (200 if task == "nonlinear_blur" else 100) and options["task"] == task
    assert (DAPS.default_steps, DAPS().ode_steps, DAPS().sigma_max, DAPS().sigma_min) == (200, 5, 100.0, 0.1)


def test_step_is_the_official_learning_rate_decay():
    # cores/mcmc.py get_lr: (1 + ratio (lr_min_ratio - 1)) lr, ratio = step / annealing num_steps (= steps + 1)
    daps = DAPS(lr=1e-4)
    assert daps.step_size(0, 200) == 1e-4
    assert daps.step_size(199, 200) == pytest.approx(1e-4 * (1 + 199 / 201 * (0.01 - 1)), rel=1e-12)


def test_gaussian_posterior_mean_and_spread():
    """With a Bayesian likelihood width (``tau = sqrt(2) sigma_y``: no 1/2 in the official data term)
    and a stable step, DAPS lands near the closed-form Gaussian posterior (posterior std 0.4-0.77)."""
    g = torch.Generator().manual_seed(3)
    L = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    C = L @ L.T + 0.5 * torch.eye(4, dtype=F64)
    mu = torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    noise_sigma = 0.1
    y = (A @ (mu + torch.linalg.cholesky(C) @ torch.randn(4, generator=g, dtype=F64))
         + noise_sigma * torch.randn(2, generator=g, dtype=F64))[None]
    gain = C @ A.T @ torch.linalg.inv(A @ C @ A.T + noise_sigma**2 * torch.eye(2, dtype=F64))
    mean, cov = mu + gain @ (y[0] - A @ mu), C - gain @ A @ C
    result = solve(y, MatrixOperator(A), GaussianPrior(mu, C), method="daps", num_samples=1000, steps=50,
                   noise_sigma=noise_sigma, seed=0, progress=False, tau=math.sqrt(2) * noise_sigma, lr=2e-3)
    x = result.samples.reshape(1000, -1)
    assert (x.mean(0) - mean).norm() < 0.2  # measured 0.14
    ratio = x.std(0) / cov.diagonal().sqrt()
    assert ((ratio > 0.9) & (ratio < 1.2)).all(), ratio  # measured 1.04-1.06


def test_a_chain_that_does_not_move_misses_the_posterior():
    prior, op, y, sigma_y, posterior = make_gmm_problem(8, 4, 1)
    n = 200
    result = solve(y, op, prior, method="daps", num_samples=n, steps=20, noise_sigma=sigma_y, seed=1,
                   progress=False, lr=1e-9, langevin_steps=10)
    g = torch.Generator().manual_seed(1001)
    exact = posterior.sample(n, generator=g)
    sw = sliced_wasserstein(result.samples.reshape(n, -1), exact, 500, torch.Generator().manual_seed(1))
    assert sw > 0.5 * sliced_wasserstein(prior.sample(n, generator=g), exact, 500, torch.Generator().manual_seed(1))


def test_same_seed_same_samples_and_rows_are_independent(gmm_problem):
    prior, op, y, sigma_y, _ = gmm_problem
    run = lambda meas, seed: solve(meas, op, prior, method="daps", steps=5, num_samples=2,  # noqa: E731
                                   noise_sigma=sigma_y, seed=seed, progress=False, langevin_steps=5).samples
    torch.testing.assert_close(run(y, 1), run(y, 1), rtol=0, atol=0)
    assert not torch.allclose(run(y, 1), run(y, 2))
    a, b = run(torch.cat([y, y + 3.0]), 1), run(torch.cat([y, y - 4.0]), 1)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("options", [{"tau": 0.0}, {"lr": 0.0}, {"sigma_min": 200.0}, {"ode_steps": 0}])
def test_bad_options_are_refused(gmm_problem, options):
    prior, op, y, sigma_y, _ = gmm_problem
    with pytest.raises(ValueError):
        solve(y, op, prior, method="daps", steps=2, noise_sigma=sigma_y, progress=False, **options)
