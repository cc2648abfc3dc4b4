"""The canon methods rgm, dreamguider and gen2res against closed forms and official loops.

* rgm (Jae-Moo/RGM ``restore.py`` ``PnP_algorithm.DRS``, ``restore.sh``): its prox against a dense
  solve, the closed-form Douglas-Rachford fixed point under a linear-shrinkage generator, and the
  official loop transcribed in :mod:`tests.helpers.official_canon_rules`.
* dreamguider (arXiv 2406.02549, no official code): the network is never differentiated, ``g_eps``
  is autograd through ``x0(eps)``, the step is MPGD's x0-space step without augmentations, and a
  Gaussian prior with ``A = I`` lands near the exact posterior mean.
* gen2res (adobe-research/gen2res ``scripts/ref_sample_single.py``): ``K = 0`` returns ``y``; with a
  Gaussian prior the restorations follow the closed form of ``x0 | x_K`` averaged over the noising;
  with an anchor-set (empirical) prior each anchor is chosen with its posterior weight given ``x_K``.
"""

from __future__ import annotations

import math

import pytest
import torch

import operators
from invsolve import solve
from invsolve.samplers.base import Problem
from invsolve.samplers.dreamguider import Dreamguider, draw_augmentations, guidance_gradient, shift_and_flip
from invsolve.samplers.gen2res import Gen2Res
from invsolve.samplers.rgm import RGM_TASK_DEFAULTS, rgm_levels, rgm_prox
from invsolve.samplers.updates import ddim_step, vp_start_std
from invsolve.schedules import respaced_timesteps
from operators import MatrixOperator
from priors import GaussianMixturePrior, GaussianPrior
from priors.adm import linear_alphas_cumprod
from tests.helpers.official_canon_rules import official_rgm_drs, official_rgm_table
from tests.helpers.posterior_problems import make_gmm_problem

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore:.* has no defaults for task:UserWarning")


def dense_matrix(op, x_shape: tuple[int, ...]) -> torch.Tensor:
    """``A`` as an ``(m, n)`` matrix, one forward call per basis vector."""
    n = int(torch.tensor(x_shape[1:]).prod())
    basis = torch.eye(n, dtype=F64).reshape(n, *x_shape[1:])
    return op(basis).reshape(n, -1).T


def bare_problem(op, y: torch.Tensor, x_shape: tuple[int, ...]) -> Problem:
    return Problem(y=y, operator=op, prior=None, x_shape=x_shape, noise_sigma=0.0, steps=1,
                   generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build", [
    lambda: operators.build("super_resolution", factor=2, method="bicubic"),
    lambda: operators.build("super_resolution", factor=2, method="average"),
    lambda: operators.build("gaussian_blur", kernel_size=5, sigma=1.0, padding="circular"),
    lambda: operators.build("inpainting", mask="random", missing=0.5, seed=1),
], ids=["sr-bicubic-svd", "sr-average", "blur-circular", "inpainting"])
def test_rgm_prox_equals_the_dense_solve(build):
    """prox_{lam ||A . - y||^2 / 2}(v) = (I + lam A^T A)^{-1} (v + lam A^T y)."""
    op, x_shape, lam = build(), (2, 3, 8, 8), 10.0
    g = torch.Generator().manual_seed(0)
    v = torch.rand(x_shape, generator=g, dtype=F64) * 2 - 1
    y = op(torch.rand(x_shape, generator=g, dtype=F64) * 2 - 1)
    A = dense_matrix(op, x_shape[:1] + x_shape[1:])
    n = A.shape[1]
    rhs = v.reshape(2, n) + lam * y.reshape(2, -1) @ A
    expected = torch.linalg.solve(torch.eye(n, dtype=F64) + lam * A.T @ A, rhs.T).T.reshape(x_shape)
    got = rgm_prox(bare_problem(op, y, x_shape), v, lam)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_rgm_table_is_the_official_one():
    a, s = rgm_levels()
    a_off, s_off = official_rgm_table()
    torch.testing.assert_close(a, a_off, rtol=1e-6, atol=0)
    torch.testing.assert_close(s[1:], s_off[1:], rtol=1e-6, atol=0)
    assert float(s[1] / a[1]) == pytest.approx(0.9574, abs=1e-3)


def test_rgm_reaches_the_closed_form_fixed_point_with_a_linear_shrinkage_generator():
    """G(x) = k x (Gaussian prior N(0, tau^2 I) at VE sigma s_1 / a_1, no noise): v = m x with
    m = 1 - alpha + alpha k, and the Douglas-Rachford fixed point solves
    ((1 - m) I + lam m A^T A) x = lam A^T y (the official loop returns x, not v = m x)."""
    g = torch.Generator().manual_seed(3)
    A = 0.6 * torch.randn(3, 5, generator=g, dtype=F64)
    y = 0.4 * torch.randn(2, 3, generator=g, dtype=F64)
    tau2, alpha, lam = 0.3, 0.5, 2.0
    prior = GaussianPrior(torch.zeros(5, dtype=F64), tau2)
    a, s = rgm_levels()
    k = tau2 / (tau2 + float(s[1] / a[1]) ** 2)
    m = 1 - alpha + alpha * k
    result = solve(y, MatrixOperator(A), prior, method="rgm", steps=400, seed=0, progress=False,
                   alpha=alpha, lam=lam, noise_factor=0.0)
    expected = torch.linalg.solve((1 - m) * torch.eye(5, dtype=F64) + lam * m * A.T @ A, lam * A.T @ y.T).T
    torch.testing.assert_close(result.image, expected, rtol=1e-9, atol=1e-9)
    assert result.nfe == 400


@pytest.mark.parametrize("levels", [1, 2])
def test_rgm_matches_the_official_drs_loop(levels):
    """Same noise draws, the mixture's exact denoiser as the generator: G(x_j, j) = D(x_j / a_j, s_j / a_j)."""
    prior, op, y, _, _ = make_gmm_problem(8, 4, 0)
    a, s = official_rgm_table()

    def G(x_t, j):
        sigma = torch.full((x_t.shape[0],), float(s[j] / a[j]), dtype=F64)
        return prior.denoise(x_t / float(a[j]), sigma)

    result = solve(y, op, prior, method="rgm", steps=6, seed=5, progress=False, alpha=0.3, lam=4.0, levels=levels)
    expected = official_rgm_drs(G, op.A, y, 0.3, 4.0, levels, 6, 0.99, torch.Generator().manual_seed(5))
    torch.testing.assert_close(result.image, expected, rtol=1e-5, atol=1e-5)


def test_rgm_takes_restore_sh_settings_for_super_resolution():
    op = operators.build("super_resolution", factor=4, method="bicubic")
    prior = GaussianPrior(torch.zeros(3, 16, 16, dtype=F64), 0.2)
    y = op(torch.zeros(1, 3, 16, 16, dtype=F64))
    result = solve(y, op, prior, method="rgm", steps=2, seed=0, progress=False)
    assert result.options["task"] == "super_resolution"
    assert {k: result.options[k] for k in ("alpha", "lam", "levels")} == dict(RGM_TASK_DEFAULTS["super_resolution"].options)


class NoGradientPrior:
    """A prior's exact denoiser behind a linear "network" layer that refuses to be differentiated."""

    def __init__(self, prior):
        self.prior = prior
        self.layer = torch.nn.Linear(prior.means.shape[1], prior.means.shape[1], bias=False).double()
        torch.nn.init.eye_(self.layer.weight)
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.prior, name)

    def denoise(self, x, sigma):
        assert not torch.is_grad_enabled() and not x.requires_grad
        self.calls += 1
        return self.layer(self.prior.denoise(x, sigma))


def test_dreamguider_never_differentiates_the_network():
    base, op, y, noise, _ = make_gmm_problem(8, 4, 0)
    prior = NoGradientPrior(base)
    result = solve(y, op, prior, method="dreamguider", steps=10, seed=0, progress=False, noise_sigma=noise)
    assert prior.calls == 10 and result.nfe == 10
    assert prior.layer.weight.grad is None and torch.isfinite(result.samples).all()


def image_problem(seed: int = 0):
    op = operators.build("gaussian_blur", kernel_size=5, sigma=1.0, padding="reflect")
    g = torch.Generator().manual_seed(seed)
    x_shape = (2, 3, 12, 12)
    y = op(torch.rand(x_shape, generator=g, dtype=F64) * 2 - 1)
    return bare_problem(op, y, x_shape), g


def test_shift_and_flip_equals_rolling_with_zero_fill():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 2, 5, 6, generator=g, dtype=F64)
    flips, shifts = torch.tensor([True, False, True]), torch.tensor([[2, -1], [0, 3], [-4, 0]])
    for n in range(3):
        expected = t[n].flip(-1) if flips[n] else t[n]
        dy, dx = (int(v) for v in shifts[n])
        expected = torch.roll(expected, (dy, dx), dims=(1, 2))
        rows, cols = torch.arange(5)[:, None] - dy, torch.arange(6)[None] - dx
        expected = expected * ((rows >= 0) & (rows < 5) & (cols >= 0) & (cols < 6))
        torch.testing.assert_close(shift_and_flip(t, flips, shifts)[n], expected, rtol=0, atol=0)


@pytest.mark.parametrize("augmentations", [0, 3])
def test_dreamguider_g_eps_is_autograd_through_x0_of_eps(augmentations):
    """In VP, x0(eps) = (x_t - sqrt(1 - abar) eps) / sqrt(abar); its eps-gradient is
    -sqrt((1 - abar) / abar) g_x, i.e. -sigma g_x with x = x_t / sqrt(abar)."""
    problem, g = image_problem()
    abar = 0.3
    sigma = math.sqrt((1 - abar) / abar)
    x_t = torch.randn(problem.x_shape, generator=g, dtype=F64)
    eps = torch.randn(problem.x_shape, generator=g, dtype=F64).requires_grad_(True)
    augs = draw_augmentations(problem, augmentations, 3)
    x0 = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    pairs = [(problem.operator(x0), problem.y)]
    if augs:
        pairs = [(shift_and_flip(p, *a), shift_and_flip(problem.y, *a)) for a in augs for p, _ in pairs[:1]]
    loss = sum((p - m).square().sum() for p, m in pairs) / (2 * len(pairs))
    (expected,) = torch.autograd.grad(loss, eps)
    g_eps = -sigma * guidance_gradient(problem, x0.detach(), augs)
    torch.testing.assert_close(g_eps, expected, rtol=1e-10, atol=1e-12)


def test_dreamguider_without_augmentations_is_mpgd_x0_guidance():
    """MPGD-style step with the closed-form g_x = A^T (A x0 - y): x0' = x0 - c g_x with
    c = scale sigma ||eps|| / ||g_x||, eps' = (x - x0') / sigma, then the DDIM step (eta = 0)."""
    prior, op, y, noise, _ = make_gmm_problem(8, 4, 0)
    steps, scale, seed = 12, 0.7, 4
    result = solve(y, op, prior, method="dreamguider", steps=steps, seed=seed, progress=False, noise_sigma=noise,
                   scale=scale, augmentations=0, eta=0.0)
    problem = Problem(y=y, operator=op, prior=prior, x_shape=tuple(y.shape[:1]) + (8,), noise_sigma=noise,
                      steps=steps, generator=torch.Generator().manual_seed(seed))
    sigmas = problem.timestep_sigmas(respaced_timesteps)
    x = vp_start_std(problem, sigmas[0]) * torch.randn(problem.x_shape, generator=torch.Generator().manual_seed(seed),
                                                        dtype=F64)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x0 = problem.denoise(x, sigma)
        g_x = (x0 @ op.A.T - y) @ op.A
        eps = (x - x0) / sigma
        x0 = x0 - scale * sigma * eps.norm(dim=1, keepdim=True) * g_x / g_x.norm(dim=1, keepdim=True)
        x = ddim_step(x0, (x - x0) / sigma, sigma, sigma_next, 0.0, None)
    torch.testing.assert_close(result.image, x, rtol=1e-9, atol=1e-9)


def test_dreamguider_with_a_gaussian_prior_and_identity_lands_near_the_posterior_mean():
    """A = I, y = x + 0.05 n: the mean of 1000 samples against the exact posterior mean, within a tenth of
    the distance the data move the mean (prior mean -> posterior mean)."""
    g = torch.Generator().manual_seed(0)
    B = torch.randn(4, 4, generator=g, dtype=F64)
    prior = GaussianPrior(0.2 * torch.randn(4, generator=g, dtype=F64), 0.1 * B @ B.T + 0.05 * torch.eye(4, dtype=F64))
    A, noise = torch.eye(4, dtype=F64), 0.05
    y = prior.sample(1, generator=g) + noise * torch.randn(1, 4, generator=g, dtype=F64)
    exact = prior.posterior(A, y, noise_sigma=noise).means[0]
    result = solve(y, MatrixOperator(A), prior, method="dreamguider", num_samples=1000, seed=0, progress=False,
                   noise_sigma=noise)
    assert float((result.samples.mean(0)[0] - exact).norm()) < 0.1 * float((exact - prior.means[0]).norm())


def test_gen2res_with_no_noise_returns_the_degraded_image():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    prior = GaussianPrior(torch.zeros(3, 8, 8, dtype=F64), 0.3)
    identity = operators.build("denoising")
    result = solve(x, identity, prior, method="gen2res", seed=0, progress=False, noise_step=0)
    torch.testing.assert_close(result.image, x, rtol=0, atol=0)
    assert result.nfe == 0
    sr = operators.build("super_resolution", factor=2, method="average")
    y = sr(x)
    result = solve(y, sr, prior, method="gen2res", seed=0, progress=False, noise_step=0)
    torch.testing.assert_close(result.image, y.repeat_interleave(2, -1).repeat_interleave(2, -2), rtol=0, atol=0)


def test_gen2res_restorations_follow_the_gaussian_closed_form():
    """Prior N(mu, C), x_K = y + s eps (s = sigma_{K-1}), the DDPM chain to 0 with the exact denoiser:
    the output mean is E[E[x0 | x_K]] = mu + W (y - mu), W = C (C + s^2 I)^{-1}, for any step variance
    (each step is affine in x); its covariance s^2 W + s^2 W W^T too (the fixed-small variance's deficit is
    below the Monte Carlo error: 5e-3 at 20000 samples).  Tolerances: 4 Monte Carlo standard errors."""
    g = torch.Generator().manual_seed(1)
    B = torch.randn(3, 3, generator=g, dtype=F64)
    C = 0.2 * B @ B.T + 0.05 * torch.eye(3, dtype=F64)
    mu = 0.3 * torch.randn(3, generator=g, dtype=F64)
    prior = GaussianPrior(mu, C, alphas_cumprod=linear_alphas_cumprod())
    y = torch.tensor([[0.5, -0.4, 0.2]], dtype=F64)
    result = solve(y, MatrixOperator(torch.eye(3, dtype=F64)), prior, method="gen2res", num_samples=20000, seed=0,
                   progress=False, guidance_scale=0.0)
    s2 = float(prior.sigmas[199]) ** 2
    W = C @ torch.linalg.inv(C + s2 * torch.eye(3, dtype=F64))
    mean, cov = mu + (y[0] - mu) @ W.T, s2 * W + s2 * W @ W.T
    samples = result.samples[:, 0]
    assert result.nfe == 200
    largest = float(cov.diagonal().max())
    torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=4 * (largest / 20000) ** 0.5)
    torch.testing.assert_close(torch.cov(samples.T), cov, rtol=0, atol=4 * largest * (2 / 20000) ** 0.5)


def test_gen2res_picks_each_anchor_with_its_posterior_weight_given_x_K():
    """An empirical prior on three anchors a_i: given x_K = y + s eps the chain ends at a_i with probability
    softmax_i(-||x_K - a_i||^2 / 2 s^2) (VE form of exp(-||y_K - sqrt(abar) a_i||^2 / 2 (1 - abar)));
    averaged over eps by Monte Carlo and compared with the frequencies of 20000 restorations."""
    anchors = torch.tensor([[0.0, 0.0], [1.0, 0.2], [-0.3, 0.9]], dtype=F64)
    prior = GaussianMixturePrior(torch.ones(3), anchors, 1e-6, alphas_cumprod=linear_alphas_cumprod())
    y = torch.tensor([[0.4, 0.3]], dtype=F64)
    s = float(prior.sigmas[199])
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    x_K = y + s * eps
    expected = torch.softmax(-(x_K[:, None] - anchors).square().sum(-1) / (2 * (s**2 + 1e-6)), dim=1).mean(0)
    result = solve(y, MatrixOperator(torch.eye(2, dtype=F64)), prior, method="gen2res", num_samples=20000, seed=0,
                   progress=False, guidance_scale=0.0)
    nearest = torch.cdist(result.samples[:, 0], anchors).argmin(1)
    assert torch.cdist(result.samples[:, 0], anchors).min(1).values.max() < 0.05
    frequencies = torch.bincount(nearest, minlength=3).to(F64) / 20000
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=4 * 0.5 / 20000**0.5)


def test_gen2res_skip_guidance_steps_on_the_official_timesteps():
    """Guided at (t + 1) % 10 == 0 (t = 199, 189, ..., 9): twenty of the 200 timesteps."""
    method = Gen2Res()
    assert [t for t in range(200) if method.guided(t)] == list(range(9, 200, 10))
    assert not any(Gen2Res(guidance_scale=0.0).guided(t) for t in range(200))


def test_dreamguider_leaves_eps_alone_where_x0_already_fits():
    """g_x = 0 (y = A(x0)): the normalised step is 0, not 0 / 0."""
    problem, g = image_problem()
    x0 = torch.rand(problem.x_shape, generator=g, dtype=F64) * 2 - 1
    problem.y = problem.operator(x0)
    x = x0 + 0.5 * torch.randn(problem.x_shape, generator=g, dtype=F64)
    method = Dreamguider(augmentations=0)
    torch.testing.assert_close(method.guided_eps(problem, x, x0, 0.5), (x - x0) / 0.5, rtol=0, atol=0)


def test_gen2res_guided_step_subtracts_the_closed_form_norm_gradient():
    """D(x) = mu + W (x - mu) (Gaussian prior): grad_x ||y - D(x)|| = -W^T (y - D(x)) / ||y - D(x)||, times
    scale sqrt((1 + s^2)(1 + s'^2)) (the official VP step in VE), on top of the same DDPM step."""
    mu, C, s, s_next = torch.tensor([0.1, -0.2]), torch.tensor([0.5, 0.2]), 0.8, 0.7
    prior = GaussianPrior(mu, torch.diag(C.to(F64)))
    y, x = torch.tensor([[0.3, 0.4]], dtype=F64), torch.tensor([[1.0, -0.5]], dtype=F64)
    steps = [Gen2Res(learned_variance=False).step(
        Problem(y=y, operator=None, prior=prior, x_shape=(1, 2), noise_sigma=0.0, steps=1,
                generator=torch.Generator().manual_seed(0)), x, y, s, s_next, guided) for guided in (False, True)]
    W = torch.diag(C.to(F64) / (C.to(F64) + s**2))
    r = y - (mu.to(F64) + (x - mu.to(F64)) @ W)
    grad = -(r @ W) / r.norm()
    expected = steps[0][0] - 0.3 * math.sqrt((1 + s**2) * (1 + s_next**2)) * grad
    torch.testing.assert_close(steps[1][0], expected, rtol=1e-12, atol=1e-12)
