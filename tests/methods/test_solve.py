"""solve(): DPS against the exact mixture posterior, Result bookkeeping, validation errors."""

from __future__ import annotations

import math

import pytest
import torch

from invsolve import methods, solve
from invsolve.samplers import registered
from invsolve.samplers.updates import ddim_step
from invsolve.schedules import karras_sigmas
from operators import MatrixOperator, Operator
from priors import GaussianMixturePrior, GaussianPrior
from tests.helpers.posterior_problems import sliced_wasserstein


def _sw(samples, posterior, seed=0):
    g = torch.Generator().manual_seed(seed)
    exact = posterior.sample(samples.shape[0], g)
    return sliced_wasserstein(samples, exact, 500, torch.Generator().manual_seed(1))


def test_dps_samples_approach_the_exact_posterior(gmm_problem):
    prior, op, y, noise_sigma, posterior = gmm_problem
    result = solve(y, op, prior, method="dps", steps=100, seed=0, num_samples=1000, noise_sigma=noise_sigma, progress=False)
    samples = result.samples[:, 0]
    prior_sw = _sw(prior.sample(1000, torch.Generator().manual_seed(3)), posterior)
    dps_sw = _sw(samples, posterior)
    assert prior_sw > 5
    assert dps_sw < 0.05 * prior_sw, (dps_sw, prior_sw)


@pytest.mark.parametrize("step_size", [-0.3, 3.0])
def test_dps_with_a_wrong_sign_or_scale_misses_the_posterior(gmm_problem, step_size, monkeypatch):
    """The tolerance above is tight enough that a flipped sign or a 10x step fails it.

    solve() refuses negative hyperparameters; the flipped sign is let through here by
    declaring step_size signed (the ``signed_options`` hook of a method class)."""
    monkeypatch.setattr(registered()["dps"], "signed_options", ("step_size",), raising=False)
    prior, op, y, noise_sigma, posterior = gmm_problem
    result = solve(y, op, prior, method="dps", steps=100, seed=0, num_samples=1000, noise_sigma=noise_sigma,
                   progress=False, step_size=step_size)
    prior_sw = _sw(prior.sample(1000, torch.Generator().manual_seed(3)), posterior)
    assert _sw(result.samples[:, 0], posterior) > 0.05 * prior_sw


def test_dps_residual_norm_is_per_sample(gmm_problem):
    """Changing one measurement of a batch leaves the other row's sample unchanged."""
    prior, op, y, noise_sigma, _ = gmm_problem
    batch = torch.cat([y, y + 3.0])
    other = torch.cat([y, y - 5.0])
    a = solve(batch, op, prior, method="dps", steps=20, seed=4, progress=False).image
    b = solve(other, op, prior, method="dps", steps=20, seed=4, progress=False).image
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-10)
    assert not torch.allclose(a[1], b[1])


def test_result_bookkeeping_and_determinism(gmm_problem):
    prior, op, y, noise_sigma, _ = gmm_problem
    y2 = torch.cat([y, 0.5 * y])
    first = solve(y2, op, prior, method="dps", steps=7, seed=11, num_samples=3, noise_sigma=noise_sigma, progress=False)
    again = solve(y2, op, prior, method="dps", steps=7, seed=11, num_samples=3, noise_sigma=noise_sigma, progress=False)
    other = solve(y2, op, prior, method="dps", steps=7, seed=12, num_samples=3, noise_sigma=noise_sigma, progress=False)
    assert first.samples.shape == (3, 2, 8)
    assert first.image.shape == (2, 8) and first.mean.shape == (2, 8)
    torch.testing.assert_close(first.mean, first.samples.mean(0))
    assert first.nfe == 7 and first.operator_calls == 7 and first.decoder_calls == first.encoder_calls == 0
    assert first.method == "dps"
    assert first.options["seed"] == 11 and first.options["steps"] == 7
    assert first.options["step_size"] == 0.3
    assert first.seconds > 0
    assert torch.equal(first.samples, again.samples)
    assert not torch.allclose(first.samples, other.samples)


def test_unseeded_run_records_a_seed_that_reproduces_it(gmm_problem):
    prior, op, y, _, _ = gmm_problem
    first = solve(y, op, prior, method="dps", steps=5, progress=False)
    again = solve(y, op, prior, method="dps", steps=5, seed=first.options["seed"], progress=False)
    assert torch.equal(first.samples, again.samples)


def test_callback_sees_every_step(gmm_problem):
    prior, op, y, _, _ = gmm_problem
    seen = []
    solve(y, op, prior, method="dps", steps=6, seed=0, progress=False, callback=lambda s: seen.append((s["step"], s["sigma"])))
    assert [step for step, _ in seen] == list(range(6))
    assert all(a[1] > b[1] for a, b in zip(seen, seen[1:]))


def test_plain_callable_operator_and_image_shapes():
    """A differentiable callable is wrapped; 4-D images go through unchanged."""
    prior = GaussianPrior(torch.zeros(1, 4, 4), 0.25)
    x = 0.3 * torch.ones(1, 1, 4, 4)
    y = 0.5 * x
    result = solve(y, lambda v: 0.5 * v, prior, method="dps", steps=5, seed=0, num_samples=2, progress=False)
    assert result.samples.shape == (2, 1, 1, 4, 4)


def test_methods_lists_dps_with_its_needs():
    listed = methods()
    assert "dps" in listed and "vjp" in listed["dps"]


class _ForwardOnly(Operator):
    forward_only = True
    output_in_image_range = False

    def forward(self, x):
        return x[:, :2]

    def output_shape(self, shape):
        return (shape[0], 2)


def test_validation_messages(gmm_problem):
    prior, op, y, _, _ = gmm_problem
    with pytest.raises(ValueError, match="unknown method 'nope'.*dps"):
        solve(y, op, prior, method="nope")
    with pytest.raises(ValueError, match="no option.*bogus"):
        solve(y, op, prior, method="dps", bogus=1)
    with pytest.raises(ValueError, match="does not match the operator"):
        solve(torch.zeros(1, 3, dtype=torch.float64), op, prior, method="dps")
    with pytest.raises(ValueError, match="NaN or inf"):
        solve(torch.full_like(y, float("nan")), op, prior, method="dps")
    with pytest.raises(ValueError, match="num_samples"):
        solve(y, op, prior, method="dps", num_samples=0)
    with pytest.raises(ValueError, match="steps"):
        solve(y, op, prior, method="dps", steps=0)
    with pytest.raises(TypeError, match="not a prior"):
        solve(y, op, object(), method="dps")
    with pytest.raises(ValueError, match="needs vjp"):
        solve(y[:, :2], _ForwardOnly(), prior, method="dps", x_shape=(1, 8))


def test_image_on_the_wrong_scale_gets_a_conversion_hint():
    class Identity(Operator):
        def forward(self, x):
            return x

        def output_shape(self, shape):
            return tuple(shape)

    prior = GaussianPrior(torch.zeros(3, 4, 4), 0.25)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*127.5"):
        solve(torch.full((1, 3, 4, 4), 200.0), Identity(), prior, method="dps")


def test_karras_grid_matches_its_formula():
    sig = karras_sigmas(10, 0.002, 80.0, rho=7.0)
    assert sig.shape == (11,) and sig[-1] == 0
    assert math.isclose(sig[0].item(), 80.0, rel_tol=1e-12)
    assert math.isclose(sig[9].item(), 0.002, rel_tol=1e-12)
    mid = (80.0 ** (1 / 7) + 4 / 9 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert math.isclose(sig[4].item(), mid, rel_tol=1e-12)
    assert torch.all(sig[:-1] > sig[1:])


def test_ddim_step_matches_its_formula():
    """eta = 0 interpolates toward x0; eta = 1 injects noise of std s' sqrt(1 - s'^2/s^2)."""
    g = torch.Generator().manual_seed(0)
    s, s_next = 2.0, 0.5
    x0 = torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    x = x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps = (x - x0) / s
    noise = lambda shape: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(ddim_step(x0, eps, s, s_next, 0.0, None), x0 + s_next / s * (x - x0))
    c = s_next * math.sqrt(1 - s_next**2 / s**2)
    injected = ddim_step(x0, eps, s, s_next, 1.0, noise) - x0 - math.sqrt(s_next**2 - c**2) * eps
    assert abs(injected.std().item() - c) < 0.01 * c
    assert torch.equal(ddim_step(x0, eps, s, 0.0, 1.0, noise), x0)


def test_matrix_operator_against_its_definition():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, generator=g, dtype=torch.float64)
    op = MatrixOperator(A)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op(x), x @ A.T)
    torch.testing.assert_close(op.pinv(op(x)), op(x) @ torch.linalg.pinv(A).T)


def test_a_float64_only_callable_is_probed_in_the_measurement_dtype():
    """A plain callable whose matrix is float64 works with a float64 measurement (no float32 probe)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, generator=g, dtype=torch.float64)
    prior = GaussianMixturePrior(torch.ones(1, dtype=torch.float64), torch.zeros(1, 5, dtype=torch.float64),
                                 torch.eye(5, dtype=torch.float64)[None])
    y = torch.randn(2, 3, generator=g, dtype=torch.float64)
    result = solve(y, lambda x: x @ A.T, prior, method="dps", steps=2, seed=0, progress=False, x_shape=(2, 5))
    assert result.samples.shape == (1, 2, 5) and result.samples.dtype == torch.float64


def test_gaussian_mixture_prior_rejects_bad_covariances():
    with pytest.raises(ValueError, match="do not fit"):
        GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 4))
