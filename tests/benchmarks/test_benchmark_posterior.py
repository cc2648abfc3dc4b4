"""The posterior benchmark: its problem against the issue's construction, SW against closed forms, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from invsolve.benchmarks import BenchmarkConfig, make_gmm_problem, run_posterior_benchmark, sliced_wasserstein
from invsolve.benchmarks.gmm_problem import grid_means, start_sigma
from invsolve.benchmarks.posterior import PRIOR_VARIANCE, prior_variance, resolve_options
from invsolve.benchmarks.report import markdown_table
from invsolve.cli import main
from invsolve.samplers import registered
from priors import GaussianMixturePrior

F64 = torch.float64


@pytest.mark.parametrize("d, d_y", [(8, 4), (80, 1), (5, 2)])
def test_problem_follows_the_mcgdiff_construction(d, d_y):
    prior, op, y, sigma_y, posterior = make_gmm_problem(d, d_y, seed=3)
    means = grid_means(d)
    assert means.shape == (25, d)
    assert set(means[:, 0].tolist()) == {-16.0, -8.0, 0.0, 8.0, 16.0}
    assert torch.equal(means[:, 2 % d], means[:, 0]) and torch.equal(means[:, 3 % d], means[:, 1 % d])
    assert len({tuple(m) for m in means.tolist()}) == 25
    s = torch.linalg.svdvals(op.A)
    assert op.A.shape == (d_y, d) and ((s > 0) & (s < 1)).all()
    assert 0 < sigma_y <= s.max() and y.shape == (1, d_y)
    # Shared posterior covariance (I + A^T A / sigma_y^2)^{-1} (Bishop 2006, eq. 2.117).
    shared = torch.linalg.inv(torch.eye(d, dtype=F64) + op.A.T @ op.A / sigma_y**2)
    covs = posterior.eigvecs @ torch.diag_embed(posterior.eigvals) @ posterior.eigvecs.transpose(1, 2)
    torch.testing.assert_close(covs, shared.expand(25, d, d))


def test_problem_is_reproducible_and_seed_dependent():
    a, b, c = make_gmm_problem(8, 4, 0), make_gmm_problem(8, 4, 0), make_gmm_problem(8, 4, 1)
    assert torch.equal(a.y, b.y) and torch.equal(a.operator.A, b.operator.A)
    assert not torch.equal(a.operator.A, c.operator.A)
    assert make_gmm_problem(8, 4, 0, noise_sigma=1e-3).noise_sigma == 1e-3


@pytest.mark.parametrize("sigma", [0.002, 0.7, 5.0, 80.0])
def test_shared_isotropic_denoiser_matches_the_general_mixture_denoiser(sigma):
    prior = make_gmm_problem(80, 4, 2).prior
    assert prior.shared_isotropic_variance == 1.0
    generic = GaussianMixturePrior(prior.weights, prior.means, torch.eye(80, dtype=F64).expand(25, 80, 80))
    assert generic.shared_isotropic_variance is None
    g = torch.Generator().manual_seed(0)
    x = prior.sample(64, generator=g) + sigma * torch.randn(64, 80, generator=g, dtype=F64)
    s = torch.full((64,), sigma, dtype=F64)
    torch.testing.assert_close(prior.denoise(x, s), generic.denoise(x, s), rtol=1e-10, atol=1e-10)


def test_sliced_wasserstein_of_a_shift_is_its_mean_projection():
    # SW_1(a, a + c) = ||c|| E|theta_1|, E|theta_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    d = 6
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, d, generator=g, dtype=F64)
    c = torch.tensor([3.0, -1.0, 0.5, 0.0, 2.0, 1.0], dtype=F64)
    expected = c.norm() * math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    assert sliced_wasserstein(a, a + c, 20000, g) == pytest.approx(float(expected), rel=0.02)
    assert sliced_wasserstein(a, a[torch.randperm(300, generator=g)], 50, g) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(a, a[:10])


def test_quick_config_covers_every_registered_method():
    config = BenchmarkConfig.quick()
    assert (config.dims, config.measurement_dims, config.seeds, config.samples) == ((8,), (4,), (0,), 200)
    assert set(config.steps) == set(registered())


def test_cli_quick_run_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(["benchmark", "posterior", "--quick", "--quiet", "--out", str(out),
                   "--methods", "diffpir,ddrm,latent_dps"])
    assert status == 0
    table = (out / "posterior.md").read_text()
    assert "| diffpir | 20 |" in table and "| ddrm | 20 | 20 |" in table
    assert "latent_dps: n/a (needs latent)" in table
    assert "exact posterior (noise floor)" in table and table in capsys.readouterr().out
    data = json.loads((out / "posterior.json").read_text())
    summary = data["summary"]["diffpir"]["d=8,d_y=4"]
    reference = data["references"][0]
    assert reference["floor"] < summary["sw_mean"] < reference["prior"]
    assert {run["method"] for run in data["runs"]} == {"diffpir", "ddrm"}


@pytest.mark.parametrize("argv, message", [
    (["--dims", "8,x"], "comma-separated integers"),
    (["--methods", "nope"], "unknown method"),
    (["--dims", "4", "--dys", "5"], "d_y"),
    (["--steps", "dps=0"], "steps"),
])
def test_cli_reports_bad_arguments(tmp_path, capsys, argv, message):
    status = main(["benchmark", "posterior", "--out", str(tmp_path), *argv])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "posterior.md").exists()


def test_prior_variance_is_the_mixture_variance():
    # 0.5 N(-2, 1) + 0.5 N(2, 1) in every coordinate: variance 1 + 4 (law of total variance).
    prior = GaussianMixturePrior(torch.tensor([1.0, 1.0]), torch.tensor([[-2.0, 2.0], [2.0, -2.0]]), 1.0)
    assert prior_variance(prior) == pytest.approx(5.0)
    problem = make_gmm_problem(8, 2, 0)
    samples = problem.prior.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert prior_variance(problem.prior) == pytest.approx(float(samples.var(0).mean()), rel=0.02)
    assert resolve_options({"tau2": PRIOR_VARIANCE, "particles": 8}, problem)["tau2"] == prior_variance(problem.prior)


def test_start_sigma_covers_the_farthest_mean():
    # |mu|_max = 16 sqrt(d) (the means (+-16, +-16, ...)).
    assert start_sigma(8) == pytest.approx(2 * 16 * math.sqrt(8))
    assert start_sigma(80) == pytest.approx(2 * 16 * math.sqrt(80))
    assert start_sigma(2) == 80.0
    assert make_gmm_problem(80, 1, 0, sigma_max=start_sigma(80)).prior.sigma_max == start_sigma(80)


def test_particle_sweep_runs_particle_methods_once_per_count():
    config = BenchmarkConfig.quick(("mcgdiff", "ddrm"))
    config.particles = (4, 8)
    config.samples, config.steps = 50, {"mcgdiff": 5, "ddrm": 5}
    report = run_posterior_benchmark(config)
    assert report.methods() == ["ddrm", "mcgdiff P=4", "mcgdiff P=8"]
    small, large = (run.nfe for run in report.runs if run.method == "mcgdiff")
    assert large == 2 * small and small % 4 == 0  # P NFE per level: the cost counts every particle
    table = markdown_table(report)
    assert f"| mcgdiff P=4 | 5 | {small:.0f} |" in table and "mcgdiff options: batch_size=None" in table
