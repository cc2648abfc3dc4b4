"""MCGdiff, TDS and PnP-DM against closed forms: exact mixture posteriors, the evidence, PnP-DM's
stationary target; plus their particle bookkeeping and capability errors.

Sources: gabrielvc/mcg_diff (``mcg_diff/particle_filter.py``, ``scripts/configs``),
blt2114/twisted_diffusion_sampler (``image_exp/image_diffusion/feynman_kac_image_ddpm.py``,
``smc_utils/feynman_kac_pf.py``), zihuiwu/PnP-DM-public (``pnpdm/samplers/pnp_edm``, ``commands.sh``).
"""

from __future__ import annotations

import math

import pytest
import torch

from invsolve import solve
from invsolve.benchmarks.gmm_problem import make_gmm_problem
from invsolve.benchmarks.posterior import prior_variance
from invsolve.samplers.mcgdiff import linspace_timesteps, with_observation_levels
from invsolve.samplers.pnpdm import PnPDM
from invsolve.samplers.smc import ParticleWeights, resample_indices, system_layout
from operators import FunctionOperator, MatrixOperator
from priors import GaussianMixturePrior, GaussianPrior
from tests.helpers.posterior_problems import sliced_wasserstein

F64 = torch.float64


def exact_log_evidence(prior: GaussianMixturePrior, A: torch.Tensor, y: torch.Tensor, sigma_y: float) -> float:
    """``log sum_k w_k N(y; A mu_k, sigma_y^2 I + A C_k A^T)`` (here ``C_k = I``)."""
    cov = A @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=F64)
    terms = torch.distributions.MultivariateNormal(prior.means @ A.T, cov).log_prob(y.reshape(-1))
    return float(torch.logsumexp(prior.weights.log() + terms, 0))


def sw_against_floor(samples: torch.Tensor, posterior: GaussianMixturePrior, n: int) -> tuple[float, float]:
    """(SW(samples, exact), SW(exact', exact)) with ``n`` samples each."""
    g = torch.Generator().manual_seed(7)
    exact, second = posterior.sample(n, generator=g), posterior.sample(n, generator=g)
    sw = sliced_wasserstein(samples.reshape(n, -1), exact, 500, torch.Generator().manual_seed(8))
    return sw, sliced_wasserstein(second, exact, 500, torch.Generator().manual_seed(8))


# ------------------------------------------------------------------ exact mixture posteriors


@pytest.mark.parametrize("method, d_y, options", [
    # One draw per 64-particle system (the MCGdiff script's N_total runs, one particle kept each).
    ("mcgdiff", 4, {"particles": 64}),
    # Multimodal (one measurement); tau2 = the mixture's variance (0.12 is for [-1, 1] images).
    ("tds", 1, {"particles": 64, "samples_per_system": 8, "tau2": "prior"}),
])
def test_particle_samplers_reach_the_noise_floor_of_an_exact_mixture_posterior(method, d_y, options):
    prior, op, y, sigma_y, posterior = make_gmm_problem(8, d_y, seed=0)
    if options.get("tau2") == "prior":
        options = {**options, "tau2": prior_variance(prior)}
    n = 256
    result = solve(y, op, prior, method=method, num_samples=n, noise_sigma=sigma_y, seed=0, progress=False,
                   batch_size=None, **options)
    sw, floor = sw_against_floor(result.samples, posterior, n)
    g = torch.Generator().manual_seed(9)
    prior_sw = sliced_wasserstein(prior.sample(n, generator=g), posterior.sample(n, generator=g), 500, g)
    assert floor < 0.1 * prior_sw  # the check can fail: a sampler of the prior is 10x the floor away
    assert sw < 2 * floor


def test_pnpdm_matches_its_stationary_target_on_a_gaussian():
    # With rho fixed at rho_min the chain's x targets p(x) N(y; A x, sigma_y^2 I + rho^2 A A^T)
    # (integrate z out of p(x) N(z; x, rho^2) p(y | z)): for p = N(mu, I) that is Gaussian.
    g = torch.Generator().manual_seed(3)
    d, mu = 4, torch.randn(4, generator=g, dtype=F64)
    A = torch.randn(2, d, generator=g, dtype=F64)
    sigma_y, rho = 0.5, 0.3
    y = (A @ (mu + torch.randn(d, generator=g, dtype=F64)) + sigma_y * torch.randn(2, generator=g, dtype=F64))[None]
    noise = sigma_y**2 * torch.eye(2, dtype=F64) + rho**2 * A @ A.T
    gain = A.T @ torch.linalg.inv(A @ A.T + noise)
    mean, cov = mu + gain @ (y[0] - A @ mu), torch.eye(d, dtype=F64) - gain @ A
    prior = GaussianPrior(mu, torch.eye(d, dtype=F64))
    n = 2000
    result = solve(y, MatrixOperator(A), prior, method="pnpdm", steps=30, num_samples=n, noise_sigma=sigma_y,
                   seed=0, progress=False, rho0=rho, rho_min=rho, samples_per_chain=10, batch_size=None)
    x = result.samples.reshape(n, d)
    assert torch.allclose(x.mean(0), mean, atol=0.08)
    # 200 chains x 10 correlated draws: covariance to 15 %; a missing rho^2 A A^T term is off by more.
    assert torch.linalg.matrix_norm(torch.cov(x.T) - cov) < 0.15 * torch.linalg.matrix_norm(cov)


def test_pnpdm_likelihood_steps_agree_svd_and_perturb_and_map():
    # The same chain with the exact SVD step and with perturb-and-MAP through a prox (no SVD).
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=1)
    common = dict(num_samples=400, noise_sigma=sigma_y, seed=0, progress=False, samples_per_chain=1, batch_size=None)
    with_svd = solve(y, op, prior, method="pnpdm", steps=20, **common).samples.reshape(400, -1)
    with_prox = solve(y, NoSVD(op.A), prior, method="pnpdm", steps=20, **common).samples.reshape(400, -1)
    assert sliced_wasserstein(with_svd, with_prox, 200, torch.Generator().manual_seed(0)) < 0.5


# ------------------------------------------------------------------ evidence


@pytest.mark.parametrize("method, systems, options", [
    ("tds", 4, {"tau2": "prior"}),
    ("mcgdiff", 32, {}),
])
def test_smc_log_evidence_matches_the_closed_form(method, systems, options):
    # d = 8, 1024 particles per system; estimates of `systems` systems are combined (log-mean-exp).
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 2, seed=0, sigma_max=500.0)
    if options.get("tau2") == "prior":
        options = {"tau2": prior_variance(prior)}
    result = solve(y, op, prior, method=method, num_samples=systems, noise_sigma=sigma_y, seed=0, progress=False,
                   particles=1024, samples_per_system=1, batch_size=None, **options)
    assert result.log_evidence.shape == (1,)
    assert abs(float(result.log_evidence[0]) - exact_log_evidence(prior, op.A, y, sigma_y)) < 0.2


def test_mcgdiff_evidence_maps_spectral_coordinates_to_the_measurement():
    # The filter runs on ybar = (U^T y) / s with noise sigma_y / s; the same seed gives the same
    # filter, so these changes move log p(y) by closed-form amounts only:
    prior = GaussianPrior(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    A, y, sigma_y = torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=F64), torch.tensor([[0.7, -0.2]], dtype=F64), 0.4

    def log_evidence(A, y, sigma_y):
        return float(solve(y, MatrixOperator(A), prior, method="mcgdiff", steps=20, num_samples=2, noise_sigma=sigma_y,
                           seed=0, progress=False, particles=32).log_evidence[0])

    base = log_evidence(A, y, sigma_y)
    # (A, y, sigma_y) -> 2 (A, y, sigma_y): the density of y = 2 y' is 2^-2 that of y'.
    assert log_evidence(2 * A, 2 * y, 2 * sigma_y) == pytest.approx(base - 2 * math.log(2), abs=1e-9)
    # A zero row adds a pure-noise measurement u ~ N(0, sigma_y^2).
    padded = log_evidence(torch.cat([A, torch.zeros(1, 2, dtype=F64)]), torch.tensor([[0.7, -0.2, 0.1]], dtype=F64), sigma_y)
    noise = -0.5 * (0.1**2 / sigma_y**2 + math.log(2 * math.pi * sigma_y**2))
    assert padded == pytest.approx(base + noise, abs=1e-9)


# ------------------------------------------------------------------ bookkeeping


def test_particle_cost_layout_and_diagnostics():
    prior, op, y, _, _ = make_gmm_problem(8, 2, seed=0)
    y2 = torch.cat([y, y + 1])  # two measurements, three samples each
    # Noiseless: no observation level is inserted, so 10 levels -> 10 NFE per particle.
    result = solve(y2, op, prior, method="mcgdiff", steps=10, num_samples=3, seed=0, progress=False, particles=8)
    assert result.samples.shape == (3, 2, 8)
    assert result.nfe == 8 * 10  # one 8-particle system per returned sample
    assert result.log_evidence.shape == (2,) and torch.isfinite(result.log_evidence).all()
    assert len(result.diagnostics["ess"]) == 10 and result.diagnostics["log_evidence_systems"].shape == (6,)
    shared = solve(y2, op, prior, method="tds", steps=10, num_samples=3, seed=0, progress=False,
                   particles=8, noise_sigma=0.1)
    assert shared.nfe == pytest.approx(8 * 10 / 3)  # the three samples share one system
    again = solve(y2, op, prior, method="tds", steps=10, num_samples=3, seed=0, progress=False,
                  particles=8, noise_sigma=0.1)
    assert torch.equal(shared.samples, again.samples)


def test_system_layout_groups_copies_of_a_measurement():
    y = torch.tensor([[1.0], [2.0], [1.0], [2.0], [1.0], [2.0]])  # 3 copies of a batch of 2
    layout = system_layout(y, per_system=2)
    assert layout.num_systems == 4  # ceil(3 / 2) systems per measurement
    for row in range(6):
        assert torch.equal(layout.distinct[layout.measurement[layout.system[row]]], y[row])
    pairs = {(int(s), int(k)) for s, k in zip(layout.system, layout.slot)}
    assert len(pairs) == 6  # every row its own draw


def test_system_layout_follows_the_rows_of_y_and_keeps_images_apart():
    # Rows sample * 2 + image, image 0 sorting after image 1: systems c * 2 + image, not value order.
    y = torch.tensor([[2.0], [1.0], [2.0], [1.0], [2.0], [1.0]])
    layout = system_layout(y, per_system=2)
    assert layout.system.tolist() == [0, 1, 0, 1, 2, 3] and layout.slot.tolist() == [0, 0, 1, 1, 0, 0]
    assert layout.distinct.flatten().tolist() == [2.0, 1.0] and layout.measurement.tolist() == [0, 1, 0, 1]
    assert layout.representative.tolist() == [0, 1, 4, 5]
    # Two images with the same measurement share systems only when they share a generator.
    same = torch.ones(4, 1)
    assert system_layout(same, per_system=2).system.tolist() == [0, 0, 1, 1]
    assert system_layout(same, per_system=2, images=2).system.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("shift", [-1.0, 0.0])  # image 1 sorting before image 0; two equal images
def test_pnpdm_batch_equals_its_images_alone_when_chains_serve_several_samples(shift):
    # 3 samples per image, 2 per chain (the contract suite's short chain keeps one per chain).
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=0)
    batch_y = torch.cat([y, y + shift])
    common = dict(steps=10, num_samples=3, noise_sigma=sigma_y, progress=False, samples_per_chain=2)
    assert PnPDM(samples_per_chain=2).kept_iterations(10) == [6, 9]
    batch = solve(batch_y, op, prior, method="pnpdm", seed=[3, 4], **common).samples
    for b, seed in enumerate([3, 4]):
        alone = solve(batch_y[b:b + 1], op, prior, method="pnpdm", seed=seed, **common).samples
        torch.testing.assert_close(batch[:, b], alone[:, 0], rtol=0, atol=1e-10 * float(alone.abs().max()))


def test_resampling_follows_the_weights_and_evidence_accumulates():
    g = torch.Generator().manual_seed(0)
    log_w = torch.log(torch.tensor([[0.1, 0.2, 0.7]], dtype=F64))
    for scheme in ("multinomial", "systematic"):
        counts = torch.bincount(resample_indices(log_w, scheme, g, 30000).flatten(), minlength=3).double() / 30000
        assert torch.allclose(counts, torch.tensor([0.1, 0.2, 0.7], dtype=F64), atol=0.01)
    weights = ParticleWeights(1, 2, torch.device("cpu"))
    weights.reweight(torch.log(torch.tensor([[1.0, 3.0]])))
    weights.reweight(torch.log(torch.tensor([[2.0, 2.0]])))
    assert float(weights.log_evidence) == pytest.approx(math.log(2.0 * 2.0))
    assert float(weights.ess()) == pytest.approx(1 / (0.25**2 + 0.75**2))


def test_official_grids_and_observation_levels():
    # gabrielvc/mcg_diff scripts/hugging_faces_models.py: torch.linspace(0, 999, 100).long().
    grid = linspace_timesteps(1000, 100)
    assert len(grid) == 100 and grid[0] == 999 and grid[-1] == 0 and grid[1] == 988
    levels = with_observation_levels([4.0, 2.0, 1.0, 0.0], torch.tensor([1.5, 1.5, 0.0, 9.0]))
    assert levels.tolist() == [4.0, 2.0, 1.5, 1.0, 0.0]
    # PnP-DM pnp_edm.py: np.linspace(40, 99, 21, dtype=int)[1:].
    assert PnPDM().kept_iterations(100)[:3] == [42, 45, 48] and PnPDM().kept_iterations(100)[-1] == 99


# ------------------------------------------------------------------ capabilities and input errors


class NoSVD(MatrixOperator):
    """A dense linear operator that offers adjoint, pinv and prox but no SVD."""

    has_svd = False


def test_mcgdiff_needs_an_svd():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 2, seed=0)
    with pytest.raises(ValueError, match="needs svd"):
        solve(y, NoSVD(op.A), prior, method="mcgdiff", noise_sigma=sigma_y, progress=False)


def test_pnpdm_langevin_step_runs_on_a_function_operator_and_rejects_noiseless_data():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 2, seed=0)
    fn = FunctionOperator(lambda x: x @ op.A.to(x).T)
    result = solve(y, fn, prior, method="pnpdm", steps=3, num_samples=2, noise_sigma=sigma_y, seed=0,
                   progress=False, langevin_steps=5, diffusion_steps=10)
    assert result.samples.shape == (2, 1, 8) and torch.isfinite(result.samples).all()
    with pytest.raises(ValueError, match="noise_sigma > 0"):
        solve(y, fn, prior, method="pnpdm", steps=3, noise_sigma=0.0, seed=0, progress=False)


@pytest.mark.parametrize("method, options, message", [
    ("mcgdiff", {"samples_per_system": 65}, "samples_per_system"),
    ("mcgdiff", {"gaussian_var": 0.0}, "gaussian_var"),
    ("tds", {"resampling": "stratified"}, "resampling"),
    ("pnpdm", {"rho_decay": 1.5}, "rho_decay"),
])
def test_bad_options_are_rejected(method, options, message):
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 2, seed=0)
    with pytest.raises(ValueError, match=message):
        solve(y, op, prior, method=method, noise_sigma=sigma_y, progress=False, **options)
