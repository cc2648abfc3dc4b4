"""PnP-Flow, OT-ODE, D-Flow and Flow Priors as the PnP-Flow repository runs them, and what each promises.

Source: github ``annegnx/PnP-Flow``, ``pnpflow/methods/{pnp_flow,ot_ode,d_flow,flow_priors}.py``,
``config/method_config/*.yaml``, ``scripts/script_test.sh``.  Parity: invsolve on
:func:`priors.from_velocity` of the exact mixture velocity against the transcriptions of
:mod:`tests.helpers.official_flow_rules` on the same field, same seed, float64.
"""

from __future__ import annotations

import pytest
import torch

from invsolve import solve
from invsolve.samplers import registered
from invsolve.samplers.dopri5 import dopri5
from operators import MatrixOperator
from priors import GaussianPrior
from priors.flow import from_velocity
from tests.helpers.official_flow_rules import (
    mixture_flow_velocity,
    official_d_flow,
    official_flow_priors,
    official_ot_ode,
    official_pnp_flow,
    paper_model,
    scipy_inverse_flow,
)
from tests.helpers.posterior_problems import make_gmm_problem

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:.* has no defaults for task:UserWarning")


def flow_problem(d: int = 4, d_y: int = 2, seed: int = 0):
    """The MCGdiff mixture problem (:func:`make_gmm_problem`) with its prior given as a velocity field."""
    prior, op, y, sigma_y, posterior = make_gmm_problem(d, d_y, seed)
    flow = from_velocity(mixture_flow_velocity(prior), data_shape=(d,))
    return prior, flow, op, torch.cat([y, y + 0.5]), sigma_y


def run(method: str, flow, op, y, sigma_y, seed: int = 0, **options):
    return solve(y, op, flow, method=method, noise_sigma=sigma_y, seed=seed, progress=False, **options).samples.flatten(0, 1)


# ---------------------------------------------------------------- parity with the official loops


def test_pnp_flow_matches_the_official_loop():
    prior, flow, op, y, sigma_y = flow_problem()
    ours = run("pnp_flow", flow, op, y, sigma_y, steps=20, alpha=0.5, lr=1.0)
    theirs = official_pnp_flow(paper_model(prior), op.A, y, steps=20, lr_pnp=1.0, alpha=0.5, num_samples=5,
                               sigma_noise=sigma_y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gamma", ["constant", "gamma_t"])
def test_ot_ode_matches_the_official_loop(gamma):
    prior, flow, op, y, sigma_y = flow_problem()
    ours = run("ot_ode", flow, op, y, sigma_y, steps=20, start_time=0.3, gamma=gamma)
    theirs = official_ot_ode(paper_model(prior), op.A, y, steps_ode=20, start_time=0.3, gamma=gamma,
                             sigma_noise=sigma_y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_ot_ode_noiseless_guidance_is_the_pseudo_inverse_limit():
    # sigma_y = 0: A^T (r^2 A A^T)^{-1} = A^+ / r^2; the transcription's dense solve at sigma_y = 0 is that.
    prior, flow, op, y, _ = flow_problem()
    ours = run("ot_ode", flow, op, y, 0.0, steps=10, start_time=0.2)
    theirs = official_ot_ode(paper_model(prior), op.A, y, steps_ode=10, start_time=0.2, gamma="constant",
                             sigma_noise=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("inner_steps, start_time", [(1, 0.0), (2, 0.1)])
def test_flow_priors_matches_the_official_loop(inner_steps, start_time):
    prior, flow, op, y, sigma_y = flow_problem()
    options = dict(lmbda=10.0, eta=0.05)
    ours = run("flow_priors", flow, op, y, sigma_y, steps=10, inner_steps=inner_steps, start_time=start_time,
               **options)
    theirs = official_flow_priors(paper_model(prior), op.A, y, N=10, K=inner_steps, start_time=start_time,
                                  generator=torch.Generator().manual_seed(0), **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- defaults and grids


def test_defaults_follow_the_official_configs_and_script():
    pnp, ot = registered()["pnp_flow"], registered()["ot_ode"]
    assert pnp.default_steps == 100 and (pnp.lr, pnp.alpha, pnp.averages) == (1.0, 1.0, 5)
    assert {k: r.options["alpha"] for k, r in pnp.task_defaults.items()} == {
        "denoising": 0.8, "gaussian_blur": 0.01, "super_resolution": 0.3, "inpainting": 0.5,
        "random_inpainting": 0.01}
    assert ot.default_steps == 100 and (ot.start_time, ot.gamma) == (0.2, "constant")
    assert {k: (r.options["start_time"], r.options["gamma"]) for k, r in ot.task_defaults.items()} == {
        "denoising": (0.3, "gamma_t"), "gaussian_blur": (0.4, "gamma_t"), "super_resolution": (0.1, "constant"),
        "inpainting": (0.1, "gamma_t"), "random_inpainting": (0.1, "constant")}


def test_ot_ode_takes_the_official_steps_after_its_start_time():
    _, flow, op, y, sigma_y = flow_problem()
    seen = []
    run("ot_ode", flow, op, y[:1], sigma_y, steps=100, start_time=0.3, callback=lambda info: seen.append(info["step"]))
    assert seen == list(range(70))  # iterations int(100 * 0.3) = 30 .. 99
    with pytest.raises(ValueError, match="start_time"):
        run("ot_ode", flow, op, y[:1], sigma_y, steps=4, start_time=0.2)


# ---------------------------------------------------------------- closed forms


def gaussian_problem(seed: int = 0, d: int = 4, d_y: int = 3, sigma_y: float = 0.1):
    """``x ~ N(mu, I)``, ``y = A x + sigma_y e``: the posterior ``N(m, S)`` in closed form."""
    g = torch.Generator().manual_seed(seed)
    mu, A = torch.randn(d, generator=g, dtype=F64), torch.randn(d_y, d, generator=g, dtype=F64)
    x = mu + torch.randn(d, generator=g, dtype=F64)
    y = (A @ x + sigma_y * torch.randn(d_y, generator=g, dtype=F64))[None]
    gain = A.T @ torch.linalg.inv(A @ A.T + sigma_y**2 * torch.eye(d_y, dtype=F64))
    return GaussianPrior(mu, torch.eye(d, dtype=F64)), MatrixOperator(A), y, sigma_y, mu + gain @ (y[0] - A @ mu), \
        torch.eye(d, dtype=F64) - gain @ A


def test_ot_ode_samples_the_exact_posterior_of_a_unit_gaussian_prior():
    # For N(mu, I) the Gaussian p(y | x_t) behind (r_t^2 A A^T + sigma_y^2 I) is exact, so the guided ODE from
    # (nearly) t = 0 transports to the posterior.  2000 samples: the mean to 0.1 posterior std (Monte Carlo:
    # 0.022), the covariance to 10 % (measured 4 %); a wrong r_t^2 or weight misses both.
    prior, op, y, sigma_y, mean, cov = gaussian_problem()
    n = 2000
    x = run("ot_ode", prior, op, y, sigma_y, num_samples=n, start_time=0.01)
    std = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean) / std).abs().max() < 0.1
    assert torch.linalg.matrix_norm(torch.cov(x.T) - cov) < 0.1 * torch.linalg.matrix_norm(cov)


def ours_inverse(v, x):
    return dopri5(lambda t, z: v(z, t), x, 1.0, 0.0, 1e-5, 1e-5)


def test_d_flow_matches_the_official_loop_for_one_image():
    # Given the same inversion, the loop (blend, L-BFGS on the loss, midpoint map) agrees to rounding.
    prior, flow, op, y, sigma_y = flow_problem()
    ours = run("d_flow", flow, op, y[:1], sigma_y, steps=5, lmbda=0.001, alpha=0.1, iterations=2, lbfgs_iterations=5)
    theirs = official_d_flow(paper_model(prior), op.A, y[:1], steps_euler=6, lmbda=0.001, alpha=0.1, max_iter=2,
                             lbfgs_iter=5, generator=torch.Generator().manual_seed(0), invert=ours_inverse)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_d_flow_inversion_matches_scipy_dormand_prince_to_its_tolerance():
    # The same Dormand-Prince pair with independent step control: equal to the tolerance (1e-5), not to rounding.
    prior, _, op, y, _ = flow_problem(d=8, d_y=4)
    v = paper_model(prior)
    x = torch.cat([y, y]) @ op.A
    ours, theirs = ours_inverse(v, x), scipy_inverse_flow(v, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # ... and inverts the forward flow: integrating back to t = 1 (at 1e-8) returns x.
    back = dopri5(lambda t, z: v(z, t), ours, 0.0, 1.0, 1e-8, 1e-8)
    torch.testing.assert_close(back, x, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d_flow_reaches_the_closed_form_minimiser_on_a_gaussian_prior(seed):
    # For N(mu, I) the flow map is T(z) = mu + z, so as lmbda -> 0 D-Flow's minimiser is the point of the
    # solution set {A x = y} whose ||x - mu|| is nearest sqrt(d - 1), the mode of the chi norm: the min-norm
    # solution when it lies outside that shell (seed 1), else one of the two points on the shell along the
    # null direction (seeds 0, 2).  lmbda = 0.001 and 20 midpoint steps: measured within 6e-4.
    prior, op, y, sigma_y, _, _ = gaussian_problem(seed=seed)
    A, mu, d = op.A, prior.means[0], op.A.shape[1]
    z_min = torch.linalg.pinv(A) @ (y[0] - A @ mu)
    null = torch.linalg.svd(A, full_matrices=True).Vh[-1]
    gap = d - 1 - z_min.dot(z_min)
    minimisers = [z_min] if gap <= 0 else [z_min + gap.sqrt() * null, z_min - gap.sqrt() * null]
    x = run("d_flow", prior, op, y, sigma_y, steps=20, lmbda=0.001, iterations=20)[0]
    assert min(float((x - mu - z).norm()) for z in minimisers) < 2e-3


def test_pnp_flow_restores_a_fully_measured_signal():
    # With an orthogonal A and a constant step (alpha = 0, gamma = 1) the data step is the projection
    # z = A^T y = x*, so each step denoises t x* + (1 - t) eps: the restoration is x* up to the last
    # denoising at t = 0.99 (measured 0.011 at |x*| ~ 20).  The official default alpha = 1 shrinks the data
    # step and stays 0.7 away, so the check can fail.
    prior, _, _, _, _ = make_gmm_problem(8, 4, 0)
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))[0]
    x_star = prior.sample(1, generator=g)
    x = run("pnp_flow", prior, MatrixOperator(Q), x_star @ Q.T, 0.0, alpha=0.0, num_samples=4)
    assert (x - x_star).abs().max() < 0.05
    far = run("pnp_flow", prior, MatrixOperator(Q), x_star @ Q.T, 0.0, alpha=1.0, num_samples=4)
    assert (far - x_star).abs().max() > 0.3


@pytest.mark.parametrize("seed", [0, 2])
def test_flow_priors_lands_near_the_map_of_a_gaussian_prior(seed):
    # ICTM approximates the MAP of lmbda ||A x - y||^2 - log p(x); with lmbda = 1 / (2 sigma_y^2) and
    # p = N(mu, I) that is the posterior mean.  The mean of 16 restorations (eta = 0.05, 100 steps) is
    # within 0.75 posterior std of it (measured 0.52, 0.23); the prior mean is 3.3 to 3.7 std away.
    prior, op, y, sigma_y, mean, cov = gaussian_problem(seed=seed)
    x = run("flow_priors", prior, op, y, sigma_y, num_samples=16, lmbda=1 / (2 * sigma_y**2), eta=0.05)
    std = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean) / std).abs().max() < 0.75
    assert ((prior.means[0] - mean) / std).abs().max() > 3


def test_dopri5_hands_back_a_non_finite_state_instead_of_shrinking_its_step_forever():
    x = torch.ones(1, 3, dtype=F64)
    assert not torch.isfinite(dopri5(lambda t, z: z * float("nan"), x, 1.0, 0.0)).all()
